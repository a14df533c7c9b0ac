//! A sweep file: parsed, validated and expanded; its errors formatted; every
//! accepted run's configuration keyed as the store keys it and within the
//! bounds every run can use (as tests/it/fuzz.rs checks its mutants).
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::Path;
use sweep::spec::{self, limits, Head, RunConfig, Transform};

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

fuzz_target!(|data: &[u8]| {
    let Ok(mut text) = std::str::from_utf8(data) else { return };
    // Leading `--set KEY=VALUE[,VALUE...]` lines are overrides, as on the command line.
    let mut overrides = Vec::new();
    while let Some(rest) = text.strip_prefix("--set ") {
        let (line, after) = rest.split_once('\n').unwrap_or((rest, ""));
        match line.parse::<spec::Override>() {
            Ok(o) => overrides.push(o),
            Err(e) => {
                let _ = e.to_string();
                return;
            }
        }
        text = after;
    }
    let _ = spec::has_tpe_search(text);
    let _ = spec::sampled_scales(text);
    let options = spec::Options { overrides, ..spec::Options::default() };
    match spec::parse_with(Path::new("fuzz.toml"), text, &options) {
        Ok(spec) => {
            for run in &spec.runs {
                let _ = spec::run_key(&run.config);
                if let Some(why) = out_of_bounds(&run.config) {
                    panic!("accepted a value no run can use: {why}");
                }
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
