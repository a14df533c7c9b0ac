//! `sweep eval`: evaluates a weights file on a dataset's test split.

use crate::cli::EvalFormat;
use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use sweep::spec::{self, DatasetName, DatasetSpec, DeviceChoice, Transform};
use sweep::train::{self, data, models::ModelSpec};

/// The augmentation sets `--augment` knows without a sweep file (test side).
fn builtin(name: &str) -> Option<Vec<Transform>> {
    let cifar = Transform::Normalize(spec::Normalize { mean: [0.4914, 0.4824, 0.4467], std: [0.2471, 0.2436, 0.2616] });
    match name {
        "none" => Some(vec![]),
        "normalize" => Some(vec![cifar]),
        "resize224" => Some(vec![Transform::Resize { size: 224 }, cifar]),
        _ => None,
    }
}

/// `--data`: `synthetic`, `cifar10`, `cifar100`, `mnist`, `fashion-mnist`, `svhn`, `stl10` (cache
/// or download), an image
/// folder or archive (`train/<class>/…`, `val/<class>/…`), or a folder holding a
/// CIFAR-10 release.
fn dataset(data: &str) -> DatasetSpec {
    match data {
        "synthetic" => return DatasetSpec::named(DatasetName::Synthetic),
        "cifar10" => return DatasetSpec::named(DatasetName::Cifar10),
        "cifar100" => return DatasetSpec::named(DatasetName::Cifar100),
        "mnist" => return DatasetSpec::named(DatasetName::Mnist),
        "fashion-mnist" | "fashion_mnist" => return DatasetSpec::named(DatasetName::FashionMnist),
        "svhn" => return DatasetSpec::named(DatasetName::Svhn),
        "stl10" => return DatasetSpec::named(DatasetName::Stl10),
        _ => {}
    }
    let abs = std::path::absolute(data).unwrap_or_else(|_| PathBuf::from(data));
    let folder = abs.is_file() || data::folder::has_split_folders(&abs);
    let mut spec = DatasetSpec::named(if folder { DatasetName::Folder } else { DatasetName::Cifar10 });
    spec.path = Some(abs.display().to_string());
    spec
}

/// The configuration sweep wrote beside a checkpoint (`runs/<key>/config.json`), if any.
fn run_config_beside(weights: &Path) -> anyhow::Result<Option<(PathBuf, spec::RunConfig)>> {
    let path = weights.parent().unwrap_or(Path::new(".")).join("config.json");
    let Ok(text) = std::fs::read_to_string(&path) else { return Ok(None) };
    let config = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a sweep run configuration (pass --augment or --sweep)", path.display()))?;
    Ok(Some((path, config)))
}

/// A transform list for a person: `resize(224), normalize` or `none`.
fn describe(transforms: &[Transform]) -> String {
    if transforms.is_empty() {
        return "none".into();
    }
    transforms
        .iter()
        .map(|t| {
            let v = serde_json::to_value(t).unwrap_or_default();
            match v {
                serde_json::Value::Object(m) => m.keys().next().cloned().unwrap_or_default(),
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[allow(clippy::too_many_arguments, clippy::too_many_lines)]
pub fn eval(
    model: Option<&str>,
    weights: &Path,
    data: Option<&str>,
    sweep_file: Option<&Path>,
    augment: Option<&str>,
    device: DeviceChoice,
    format: EvalFormat,
) -> anyhow::Result<ExitCode> {
    if !weights.is_file() {
        let why = if weights.exists() { "not a file" } else { "no such file" };
        bail!("--weights {}: {why}", weights.display());
    }
    let (mut ds_spec, mut transforms, mut seed) = (None, None, 0);
    let mut model = model.map(str::to_owned);
    // Where the transforms came from, said with the result.
    let mut source = String::new();
    if sweep_file.is_none() {
        // A checkpoint sweep wrote: its run's dataset, and its own test
        // transforms unless --augment says otherwise.
        if let Some((path, config)) = run_config_beside(weights)? {
            if model.as_deref().is_some_and(|m| m != config.model) {
                bail!(
                    "--model {}: {} says the run trained {} (leave --model out, or pass --augment to evaluate otherwise)",
                    model.unwrap_or_default(),
                    path.display(),
                    config.model
                );
            }
            model = Some(config.model.clone());
            ds_spec = Some(config.dataset.clone());
            seed = config.seed;
            if augment.is_none() {
                transforms = Some(config.test_transforms.clone());
                source = format!("the run's test transforms, from {}", path.display());
            }
        }
    }
    let model =
        model.context("give --model (the weights are not a sweep checkpoint with a config.json beside them)")?;
    let model = model.as_str();
    if let Some(file) = sweep_file {
        let s = spec::load(file).map_err(|e| anyhow::anyhow!("{e}"))?;
        let run = match augment {
            Some(a) => s.runs.iter().find(|r| r.config.augment == a),
            None => s.runs.first(),
        };
        if let Some(run) = run {
            ds_spec = Some(run.config.dataset.clone());
            transforms = Some(run.config.test_transforms.clone());
            seed = run.config.seed;
            source = format!("set `{}` of {}", run.config.augment, file.display());
        } else if let Some(a) = augment {
            bail!("{}: no run uses the augmentation set `{a}`", file.display());
        }
    }
    if transforms.is_none() {
        let name = augment.unwrap_or("none");
        source = format!("--augment {name}");
        transforms = Some(builtin(name).with_context(|| {
            format!(
                "--augment {name}: not a built-in set (none, normalize, resize224); give --sweep FILE to use its sets"
            )
        })?);
    }
    if let Some(d) = data {
        ds_spec = Some(dataset(d));
    }
    let ds_spec = ds_spec.context(
        "give --data (synthetic, cifar10, cifar100, an image folder or a CIFAR-10 release folder) or --sweep FILE",
    )?;
    let transforms = transforms.expect("set above");

    let (spec, classes) = ModelSpec::for_weights(model, weights).map_err(anyhow::Error::msg)?;
    let ds = data::load(&ds_spec)?;
    if !ds.skipped.is_empty() {
        eprintln!(
            "note: {} unreadable image(s) left out (`skip_unreadable`): {}",
            ds.skipped.len(),
            data::folder::name_some(&ds.skipped)
        );
    }
    if ds.classes.len() != classes {
        bail!("{}: the head has {classes} classes, the dataset {}", weights.display(), ds.classes.len());
    }
    let (dev, dev_name) = train::device(device)?;
    let built = spec.build(classes, &dev, 0).map_err(anyhow::Error::msg)?;
    let start = std::time::Instant::now();
    let pipe = train::pipeline(&transforms, &ds.test, &dev)?;
    // From the threads the trainer runs on (train::threads); the model moves there.
    let (net, test, pipe_ref, dev_ref) = (built.inference, &ds.test, &pipe, &dev);
    let stats = train::threads::for_device(&dev, move || {
        // A training batch of 16's test pass: 32 images at a time on the CPU, 256 on a GPU.
        train::evaluate_model(net.as_ref(), test, None, pipe_ref, train::eval_batch(16, dev_ref), seed, dev_ref)
    })?;
    let secs = start.elapsed().as_secs_f64();
    match format {
        EvalFormat::Json => {
            let v = serde_json::json!({
                "model": model,
                "weights": weights.display().to_string(),
                "device": dev_name,
                "loss": stats.loss,
                "top1": stats.top1,
                "top5": stats.top5,
                "images": stats.images,
                "per_class_acc": train::per_class_accuracy(&stats.confusion),
                "seconds": secs,
                "transforms": describe(&transforms),
                "transforms_from": source,
            });
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        EvalFormat::Table => {
            println!("model   {model} ({})", weights.display());
            println!("images  {} (test split, {dev_name}, {secs:.1}s)", stats.images);
            println!("transforms  {} ({source})", describe(&transforms));
            println!("loss    {:.4}", stats.loss);
            println!("top-1   {:.2}%", stats.top1);
            println!("top-5   {:.2}%", stats.top5);
        }
    }
    Ok(ExitCode::SUCCESS)
}
