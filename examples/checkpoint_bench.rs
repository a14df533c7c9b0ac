//! Times writing a checkpoint (the two files of `sweep::train::checkpoint::save`, synced and
//! hashed) for a model of the zoo with SGD momentum buffers, as the trainer does after every
//! epoch: the median and best of `n` saves into a temporary folder (BENCHMARKS.md).
//!
//!     cargo run --release --example checkpoint_bench -- [model] [n]
use candle_core::{DType, Device, Tensor};
use sweep::spec::OptimizerSpec;
use sweep::train::checkpoint::{self, TrainerState};
use sweep::train::models::ModelSpec;
use sweep::train::optim::Optimizer;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let model = args.next().unwrap_or_else(|| "resnet18".into());
    let n: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(7);
    let built = ModelSpec::plain(&model)
        .map_err(anyhow::Error::msg)?
        .build_with(10, &Device::Cpu, 0, DType::F32)
        .map_err(anyhow::Error::msg)?;
    let spec: OptimizerSpec = serde_json::from_str(r#"{"name": "sgd", "lr": 0.01, "momentum": 0.9}"#)?;
    let mut opt = Optimizer::new(spec, built.trainable.clone());
    // One step, so that every parameter has its momentum buffer: loss = sum of every weight.
    let mut loss = Tensor::zeros((), DType::F32, &Device::Cpu)?;
    for (_, v) in &built.trainable {
        loss = (loss + v.as_tensor().sum_all()?)?;
    }
    opt.step(&loss.backward()?)?;
    let home = tempfile::tempdir()?;
    let mut state = TrainerState::default();
    let mut ms = Vec::new();
    let mut bytes = 0;
    for e in 0..n {
        state.epoch = e as u64 + 1;
        let start = std::time::Instant::now();
        let saved = checkpoint::save(home.path(), "run", &built.varmap, &opt, &state)?;
        ms.push(start.elapsed().as_secs_f64() * 1e3);
        bytes = [&saved.path, &saved.state_path]
            .iter()
            .map(|p| std::fs::metadata(home.path().join(p)).map_or(0, |m| m.len()))
            .sum();
    }
    let mut ms = ms.split_off(1);
    ms.sort_by(f64::total_cmp);
    println!(
        "{model}: checkpoint of {:.1} MB (weights and momentum) saved in median {:.0} ms, best {:.0} ms ({} saves after the first)",
        bytes as f64 / 1e6,
        ms[ms.len() / 2],
        ms[0],
        ms.len()
    );
    Ok(())
}
