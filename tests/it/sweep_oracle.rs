//! What a fuzzed sweep file is held to, shared by `tests/it/fuzz.rs` and the
//! coverage-guided fuzzer `fuzz/fuzz_targets/sweep_file.rs` (which includes
//! this file by its path).

use sweep::spec::overrides::BadOverride;
use sweep::spec::{limits, Head, Override, RunConfig, Transform};

/// Why an accepted configuration is not one a run can train, if it is not.
pub fn out_of_bounds(c: &RunConfig) -> Option<String> {
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

/// A fuzzer's input split into its leading `--set KEY=VALUE[,VALUE...]` lines
/// (overrides, as on the command line) and the sweep file after them.
pub fn split_sets(mut text: &str) -> Result<(Vec<Override>, &str), BadOverride> {
    let mut overrides = Vec::new();
    while let Some(rest) = text.strip_prefix("--set ") {
        let (line, after) = rest.split_once('\n').unwrap_or((rest, ""));
        overrides.push(line.parse::<Override>()?);
        text = after;
    }
    Ok((overrides, text))
}
