//! A mutation fuzzer for the sweep-file parser: the shipped sweep files (and
//! the quickstart) mutated at random, thousands of times, each parsed on its
//! own thread. No mutant may panic, take over 10 s, or be accepted with a
//! non-finite number or a value beyond `spec::limits`. Bounded in time
//! (`SWEEP_FUZZ_SECS`, default 20) and seeded (`SWEEP_FUZZ_SEED`), so CI runs
//! it on every submission and a failure names the seed and mutant to replay.

use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use sweep::spec::{self, limits, Head, RunConfig, Transform};
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

/// Why an accepted configuration is not one a run can train, if it is not.
fn out_of_bounds(c: &RunConfig) -> Option<String> {
    let json = serde_json::to_string(c).unwrap();
    if json.contains("null") {
        return Some(format!("a non-finite number became null: {json}"));
    }
    if c.batch_size == 0 || c.batch_size > limits::MAX_BATCH_SIZE || c.epochs == 0 || c.epochs > limits::MAX_EPOCHS {
        return Some(format!("batch_size {} epochs {}", c.batch_size, c.epochs));
    }
    if let Head::Mlp { hidden, .. } = &c.head {
        if hidden.iter().any(|&w| w == 0 || w > limits::MAX_WIDTH) {
            return Some(format!("head {hidden:?}"));
        }
    }
    for t in c.train_transforms.iter().chain(&c.test_transforms) {
        let side = match t {
            Transform::Resize { size } | Transform::CenterCrop { size } | Transform::RandomCrop { size, .. } => *size,
            _ => 1,
        };
        if side == 0 || side > limits::MAX_IMAGE_SIDE {
            return Some(format!("transform {t:?}"));
        }
    }
    let sizes = [c.dataset.train_size, c.dataset.test_size];
    if sizes.iter().flatten().any(|&n| n == 0 || n > limits::MAX_IMAGES) {
        return Some(format!("dataset {:?}", c.dataset));
    }
    None
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
        let (tx, rx) = mpsc::channel();
        let text = mutant.clone();
        std::thread::spawn(move || {
            let r = std::panic::catch_unwind(|| spec::parse(Path::new("mutant.toml"), &text).ok());
            let _ = tx.send(r);
        });
        let replay = format!("mutant {tried} of seed {seed}:\n{mutant}");
        match rx.recv_timeout(Duration::from_secs(10)) {
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("the parser took over 10 s on {replay}"),
            Err(mpsc::RecvTimeoutError::Disconnected) | Ok(Err(_)) => panic!("the parser panicked on {replay}"),
            Ok(Ok(Some(spec))) => {
                accepted += 1;
                for r in &spec.runs {
                    if let Some(why) = out_of_bounds(&r.config) {
                        panic!("accepted a value no run can use ({why}) in {replay}");
                    }
                }
            }
            Ok(Ok(None)) => {}
        }
        tried += 1;
    }
    eprintln!("fuzz: {tried} mutants in {secs} s, {accepted} accepted, none panicked, hung or slipped through");
    assert!(tried > 100, "only {tried} mutants were tried");
}
