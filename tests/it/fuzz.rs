//! Mutation fuzzers. The sweep-file parser: the shipped sweep files (and the
//! quickstart) mutated at random, thousands of times, each parsed on its own
//! thread. No mutant may panic, take over 10 s, or be accepted with a
//! non-finite number or a value beyond `spec::limits`. The binary readers:
//! torch.save archives and safetensors (pretrained weights, `sweep eval`),
//! CIFAR's pickles, SVHN's MAT-files and the image formats of a folder,
//! mutated byte by byte, and whole SVHN, MNIST, CIFAR-10 and image-folder (a
//! tar archive) datasets with one such file; none may panic or take over 10 s. Each is bounded in
//! time (`SWEEP_FUZZ_SECS`, default 20 and 10) and seeded (`SWEEP_FUZZ_SEED`),
//! so CI runs them on every submission and a failure names the seed and the
//! mutant to replay (a binary one is kept in the temporary folder).

use crate::sweep_oracle::{out_of_bounds, split_sets};
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use sweep::spec;
use sweep::train::rng::Rng;

/// Values that have broken parsers before: non-finite, negative, zero, huge.
const HOSTILE: &[&str] = &[
    "nan",
    "inf",
    "-inf",
    "+nan",
    "-1",
    "0",
    "-0.0",
    "1e300",
    "-1e300",
    "9223372036854775807",
    "18446744073709551616",
    "4294967295",
    "1000000000000",
    "0.5",
    "\"\"",
    "\"\\u001b[31m\"",
    "[]",
    "{}",
    "true",
];

fn mutate(text: &str, rng: &mut Rng) -> String {
    let mut t = text.to_owned();
    for _ in 0..=rng.below(3) {
        let bytes = t.as_bytes();
        match rng.below(6) {
            // A number (or a word) replaced by a hostile value.
            0 | 1 => {
                let starts: Vec<usize> = (0..bytes.len())
                    .filter(|&i| {
                        (bytes[i].is_ascii_digit() || bytes[i] == b'"')
                            && (i == 0 || matches!(bytes[i - 1], b' ' | b'[' | b'=' | b','))
                    })
                    .collect();
                if starts.is_empty() {
                    continue;
                }
                let s = starts[rng.below(starts.len())];
                let end = (s + 1..t.len())
                    .find(|&i| matches!(bytes[i], b',' | b']' | b'}' | b'\n' | b' '))
                    .unwrap_or(t.len());
                t.replace_range(s..end, HOSTILE[rng.below(HOSTILE.len())]);
            }
            // A line deleted or duplicated.
            2 => {
                let mut lines: Vec<&str> = t.lines().collect();
                if lines.is_empty() {
                    continue;
                }
                let i = rng.below(lines.len());
                if rng.below(2) == 0 {
                    lines.remove(i);
                } else {
                    lines.insert(i, lines[i]);
                }
                t = lines.join("\n");
            }
            // A byte inserted: punctuation, a control character, invalid UTF-8 is not possible in a str.
            3 => {
                let at = rng.below(t.len() + 1);
                let at = (0..=at).rev().find(|&i| t.is_char_boundary(i)).unwrap_or(0);
                let chars = ['[', ']', '{', '}', '=', '"', '.', ',', '\n', '\u{1b}', '\r', '#', '\'', '\\'];
                t.insert(at, chars[rng.below(chars.len())]);
            }
            // Truncated.
            4 => {
                let at = rng.below(t.len() + 1);
                let at = (0..=at).rev().find(|&i| t.is_char_boundary(i)).unwrap_or(0);
                t.truncate(at);
            }
            // An axis made long.
            _ => {
                if let Some(i) = t.find("= [") {
                    let n = 1 + rng.below(400);
                    let list: Vec<String> = (1..=n).map(|v| v.to_string()).collect();
                    t.insert_str(i + 3, &format!("{},", list.join(",")));
                }
            }
        }
    }
    t
}

#[test]
fn mutated_sweep_files_never_panic_hang_or_slip_through() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let seeds: Vec<String> = ["experiments/quickstart.toml", "experiments/report.toml", "bench/smallcnn.toml"]
        .iter()
        .map(|f| std::fs::read_to_string(root.join(f)).unwrap())
        .chain(std::iter::once(crate::tiny_sweep("fuzz", 64, 2, "[[grid]]\noptimizer.lr = [0.1, 0.01]\n")))
        .collect();
    // Every shipped file parses, and its configurations pass the same checks.
    for s in &seeds {
        let spec = spec::parse(Path::new("seed.toml"), s).unwrap();
        assert!(spec.runs.iter().all(|r| out_of_bounds(&r.config).is_none()));
    }
    let secs: u64 = std::env::var("SWEEP_FUZZ_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    let seed: u64 = std::env::var("SWEEP_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let mut rng = Rng::new(seed);
    let start = Instant::now();
    let (mut tried, mut accepted) = (0u64, 0u64);
    while start.elapsed() < Duration::from_secs(secs) {
        let mutant = mutate(&seeds[rng.below(seeds.len())], &mut rng);
        let text = mutant.clone();
        let replay = format!("mutant {tried} of seed {seed}:\n{mutant}");
        match survives(move || spec::parse(Path::new("mutant.toml"), &text).ok()) {
            Err(why) => panic!("the parser {why} on {replay}"),
            Ok(Some(spec)) => {
                accepted += 1;
                for r in &spec.runs {
                    if let Some(why) = out_of_bounds(&r.config) {
                        panic!("accepted a value no run can use ({why}) in {replay}");
                    }
                }
            }
            Ok(None) => {}
        }
        tried += 1;
    }
    eprintln!("fuzz: {tried} mutants in {secs} s, {accepted} accepted, none panicked, hung or slipped through");
    assert!(tried > 100, "only {tried} mutants were tried");
}

/// Values that have broken binary readers: lengths and counts at the edges of
/// their integer types, zero, and the bytes that open or end a structure.
const HOSTILE_WORDS: &[u64] = &[
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0x7fff,
    0xffff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    u64::MAX,
    1 << 40,
    i64::MAX as u64,
];

fn mutate_bytes(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..=rng.below(4) {
        if b.is_empty() {
            break;
        }
        // A file's structure is mostly at its ends (headers, a torch archive's pickle and
        // directory, a CIFAR pickle's opcodes around its data), so two thirds of the
        // mutations land in the first or last 512 bytes.
        let near = rng.below(b.len().min(512));
        let at = [near, b.len() - 1 - near, rng.below(b.len())][rng.below(3)];
        match rng.below(7) {
            // A bit flipped.
            0 | 1 => b[at] ^= 1 << rng.below(8),
            // A hostile word written over 1, 2, 4 or 8 bytes, either byte order.
            2 | 3 => {
                let width = [1, 2, 4, 8][rng.below(4)];
                let word = HOSTILE_WORDS[rng.below(HOSTILE_WORDS.len())];
                let bytes = if rng.below(2) == 0 { word.to_le_bytes() } else { word.to_be_bytes() };
                let src = if rng.below(2) == 0 { &bytes[..width] } else { &bytes[8 - width..] };
                let end = (at + width).min(b.len());
                b[at..end].copy_from_slice(&src[..end - at]);
            }
            // Truncated.
            4 => b.truncate(at),
            // A chunk deleted or repeated.
            5 => {
                let end = (at + 1 + rng.below(64)).min(b.len());
                if rng.below(2) == 0 {
                    b.drain(at..end);
                } else {
                    let chunk = b[at..end].to_vec();
                    b.splice(at..at, chunk);
                }
            }
            // A random byte inserted.
            _ => b.insert(at, rng.below(256) as u8),
        }
    }
    b
}

/// Runs `f` on its own thread: what it returned, or the message of its panic or hang.
fn survives<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        let _ = tx.send(r);
    });
    match rx.recv_timeout(Duration::from_secs(10)) {
        Err(mpsc::RecvTimeoutError::Timeout) => Err("took over 10 s".into()),
        Err(mpsc::RecvTimeoutError::Disconnected) => Err("panicked".into()),
        Ok(Err(e)) => Err(format!(
            "panicked: {}",
            e.downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default()
        )),
        Ok(Ok(value)) => Ok(value),
    }
}

#[test]
fn mutated_binary_files_never_panic_or_hang() {
    use sweep::train::data::{folder, mat, pickle};
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let read = |p: &str| std::fs::read(root.join(p)).unwrap();
    // Weights (torch.save zips and safetensors), CIFAR's pickles, SVHN's MAT-files, images.
    let weights: Vec<Vec<u8>> =
        ["models/pth_plain.pth", "models/pth_checkpoint.pth", "models/pth_ddp.pth", "models/resnet_basic.safetensors"]
            .iter()
            .map(|p| read(p))
            .collect();
    let pickles: Vec<Vec<u8>> = ["data/cifar10_p2.pkl", "data/cifar100_p4.pkl"].iter().map(|p| read(p)).collect();
    let mats: Vec<Vec<u8>> =
        ["data/mat/little_endian.mat", "data/mat/big_endian.mat", "data/mat/testcell_7.4_GLNX86.mat"]
            .iter()
            .map(|p| read(p))
            .collect();
    let mut images: Vec<Vec<u8>> =
        ["train/cat/palette.bmp", "train/cat/rgb.ppm", "train/dog/lzw.TIFF", "test/dog/alpha.webp"]
            .iter()
            .map(|p| read(&format!("data/formats/{p}")))
            .collect();
    for format in [image::ImageFormat::Png, image::ImageFormat::Jpeg] {
        let img = image::RgbImage::from_fn(9, 7, |x, y| image::Rgb([(x * 20) as u8, (y * 30) as u8, 99]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, format).unwrap();
        images.push(out.into_inner());
    }
    for p in &pickles {
        pickle::load(p).unwrap();
    }
    for m in &mats {
        mat::read(m.as_slice()).unwrap();
    }
    for i in &images {
        folder::decode(i).unwrap();
    }
    // Whole datasets, one file of each mutated at a time: SVHN's two MAT-files,
    // MNIST's four IDX files, CIFAR-10's six pickles.
    let datasets = tempfile::tempdir().unwrap();
    let (svhn, mnist, cifar) = (datasets.path().join("svhn"), datasets.path().join("mnist"), datasets.path().join("c"));
    let py = cifar.join("cifar-10-batches-py");
    for d in [&svhn, &mnist, &py] {
        std::fs::create_dir_all(d).unwrap();
    }
    let svhn_train = crate::data::svhn_file(&[10., 3., 1.], false);
    std::fs::write(svhn.join("train_32x32.mat"), &svhn_train).unwrap();
    std::fs::write(svhn.join("test_32x32.mat"), crate::data::svhn_file(&[9.], true)).unwrap();
    let idx = |dims: &[u32], body: &[u8]| -> Vec<u8> {
        let mut b = vec![0, 0, 8, dims.len() as u8];
        b.extend(dims.iter().flat_map(|d| d.to_be_bytes()));
        b.extend_from_slice(body);
        b
    };
    let pixels: Vec<u8> = (0..3 * 28 * 28).map(|i| (i % 251) as u8).collect();
    let mnist_files =
        [idx(&[3, 28, 28], &pixels), idx(&[3], &[5, 0, 4]), idx(&[1, 28, 28], &pixels[..784]), idx(&[1], &[7])];
    let mnist_names = sweep::train::data::mnist::MNIST.files.map(|(f, _)| f);
    for (name, bytes) in mnist_names.iter().zip(&mnist_files) {
        std::fs::write(mnist.join(name), bytes).unwrap();
    }
    let batch = read("data/cifar10_p2.pkl");
    for f in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"] {
        std::fs::write(py.join(f), &batch).unwrap();
    }
    let cache =
        sweep::train::data::cifar::Cache { dir: datasets.path().join("cache"), base_url: "http://127.0.0.1:9".into() };
    // An image folder as a tar archive (not gzipped, so that the mutations hit its headers).
    let tar_path = datasets.path().join("imgs.tar");
    let tar: Vec<(String, Vec<u8>)> = ["train/cat/a.png", "train/dog/b.png", "test/cat/c.png", "test/dog/d.png"]
        .iter()
        .enumerate()
        .map(|(i, name)| ((*name).to_owned(), crate::data::png(5, 6, i as u8)))
        .collect();
    let tar = crate::data::targz(&tar, false);
    std::fs::write(&tar_path, &tar).unwrap();
    let (svhn_dir, mnist_dir, cifar_dir, tar_file) = (svhn.clone(), mnist.clone(), cifar.clone(), tar_path.clone());
    let loads = move |kind: usize| -> bool {
        use sweep::train::data as d;
        let (svhn, mnist, cifar) = (&svhn_dir, &mnist_dir, &cifar_dir);
        let r = match kind {
            4 => d::svhn::load(Some(svhn), &cache, &d::svhn::FILES, false).map(|_| ()),
            5 => d::mnist::load(&d::mnist::MNIST, Some(mnist), &cache, false).map(|_| ()),
            6 => d::cifar::load(sweep::spec::DatasetName::Cifar10, Some(cifar), &cache, false).map(|_| ()),
            _ => d::folder::load(&tar_file, &d::folder::FolderOptions::default()).map(|_| ()),
        };
        r.is_ok()
    };
    for kind in 4..8 {
        assert!(loads(kind), "dataset {kind} reads before it is mutated");
    }
    let loads = std::sync::Arc::new(loads);

    let dir = tempfile::tempdir().unwrap();
    let secs: u64 = std::env::var("SWEEP_FUZZ_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(10);
    let seed: u64 = std::env::var("SWEEP_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let mut rng = Rng::new(seed);
    let start = Instant::now();
    let svhn_seeds = vec![svhn_train.clone()];
    let mnist_seeds = mnist_files.to_vec();
    let cifar_seeds = vec![batch.clone()];
    let tar_seeds = vec![tar];
    let (mut tried, mut read) = ([0u64; 8], [0u64; 8]);
    while start.elapsed() < Duration::from_secs(secs) {
        let kind = rng.below(8);
        let seeds = [&weights, &pickles, &mats, &images, &svhn_seeds, &mnist_seeds, &cifar_seeds, &tar_seeds][kind];
        let n = tried.iter().sum::<u64>();
        let which = rng.below(seeds.len());
        let mutant = mutate_bytes(&seeds[which], &mut rng);
        let path = match kind {
            4 => svhn.join("train_32x32.mat"),
            5 => mnist.join(mnist_names[which]),
            6 => py.join("data_batch_3"),
            7 => tar_path.clone(),
            _ => dir.path().join(format!("mutant-{n}")),
        };
        let outcome = match kind {
            0 => {
                std::fs::write(&path, &mutant).unwrap();
                let p = path.clone();
                survives(move || sweep::train::weights::read(&p).is_ok())
            }
            1 => {
                let m = mutant.clone();
                survives(move || pickle::load(&m).is_ok())
            }
            2 => {
                let m = mutant.clone();
                survives(move || mat::read(m.as_slice()).is_ok())
            }
            3 => {
                let m = mutant.clone();
                survives(move || folder::decode(&m).is_ok())
            }
            _ => {
                std::fs::write(&path, &mutant).unwrap();
                let loads = loads.clone();
                survives(move || loads(kind))
            }
        };
        if let Err(why) = outcome {
            let keep = std::env::temp_dir().join(format!("sweep-fuzz-{seed}-{n}"));
            std::fs::write(&keep, &mutant).unwrap();
            panic!("reader {kind} {why} on mutant {n} of seed {seed}, kept in {}", keep.display());
        }
        if kind < 4 {
            let _ = std::fs::remove_file(&path);
        } else {
            std::fs::write(&path, &seeds[which]).unwrap();
        }
        tried[kind] += 1;
        read[kind] += u64::from(outcome == Ok(true));
    }
    eprintln!(
        "fuzz: {tried:?} mutated weights, pickles, MAT-files, images, SVHN, MNIST, CIFAR-10 and image archives \
         in {secs} s \
         ({read:?} read without an error), none panicked or hung"
    );
    assert!(tried.iter().all(|&n| n > 10), "too few mutants: {tried:?}");
}

/// What the coverage-guided fuzzer `fuzz/fuzz_targets/TARGET.rs` does with its input, on stable.
fn replay(target: &str, bytes: &[u8], dir: &Path) -> bool {
    use sweep::train::data::{folder, mat, pickle};
    match target {
        "sweep_file" => std::str::from_utf8(bytes).is_ok_and(|text| {
            let Ok((overrides, text)) = split_sets(text) else { return false };
            let options = spec::Options { overrides, ..spec::Options::default() };
            spec::parse_with(Path::new("f.toml"), text, &options).is_ok()
        }),
        "pickle" => pickle::load(bytes).is_ok_and(|v| {
            let _ = (v.as_bytes(), v.as_string(), v.as_ints(), v.as_array());
            true
        }),
        "mat" => mat::read(bytes).is_ok_and(|arrays| {
            arrays.iter().all(|a| {
                let _ = (a.is_numeric(), a.len(), a.is_empty(), a.as_u8(), a.to_f64());
                true
            })
        }),
        "image" => folder::decode(bytes).is_ok(),
        "weights" => {
            let path = dir.join("weights.pth");
            std::fs::write(&path, bytes).unwrap();
            sweep::train::weights::read(&path).is_ok()
        }
        _ => panic!("no replay for fuzz target {target}: add its arm to tests/it/fuzz.rs::replay"),
    }
}

/// The inputs that made a coverage-guided fuzzer (`fuzz/`, `bash fuzz/run.sh`) fail, kept in
/// `tests/fixtures/fuzz/TARGET/` and replayed through the same readers: each must now be read or
/// refused, without a panic (an overflow among them: tests are built with overflow checks) or a hang.
#[test]
fn inputs_the_coverage_guided_fuzzers_found_are_read_or_refused() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz");
    let dir = tempfile::tempdir().unwrap();
    let mut replayed = 0;
    for target in std::fs::read_dir(&root).unwrap() {
        let target = target.unwrap();
        let name = target.file_name().to_string_lossy().into_owned();
        for input in std::fs::read_dir(target.path()).unwrap() {
            let input = input.unwrap().path();
            let (bytes, name, dir) = (std::fs::read(&input).unwrap(), name.clone(), dir.path().to_owned());
            if let Err(why) = survives(move || replay(&name, &bytes, &dir)) {
                panic!("{} {why}", input.display());
            }
            replayed += 1;
        }
    }
    assert!(replayed > 0, "nothing in {}", root.display());
}
