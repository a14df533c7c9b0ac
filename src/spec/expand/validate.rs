//! One merged table into a checked [`RunConfig`]: required fields, defaults,
//! the optimizer's and the schedule's own rules.

use super::{key_offset, DatasetName, DatasetSpec, SpecError};
use super::{
    unknown_augment, Ctx, Deserialize, OptimizerSpec, Path, RunConfig, RunFields, ScheduleSpec, Source, Table, Value,
};
use crate::spec::limits::{at_most, MAX_BATCH_BYTES, MAX_BATCH_SIZE, MAX_EPOCHS, MAX_IMAGE_SIDE, MAX_WIDTH};
use crate::spec::limits::{MAX_IMAGES, MAX_SYNTHETIC_IMAGES};
use crate::spec::{Head, Transform};

pub(super) type FinalizeError = (Option<String>, String);

pub(super) fn finalize(ctx: &Ctx, merged: Table, seed: u64) -> Result<RunConfig, FinalizeError> {
    let f = RunFields::deserialize(Value::Table(merged)).map_err(|e| (None, e.message().trim().to_owned()))?;
    let missing = |k: &str| (Some(k.to_owned()), format!("no `{k}` given: set it in [defaults], a grid or the run"));
    let model = f.model.ok_or_else(|| missing("model"))?;
    let batch_size = f.batch_size.ok_or_else(|| missing("batch_size"))?;
    let epochs = f.epochs.ok_or_else(|| missing("epochs"))?;
    let optimizer = f.optimizer.ok_or_else(|| missing("optimizer"))?;
    let schedule = f.schedule.unwrap_or(ScheduleSpec::Constant);
    let augment = f.augment.unwrap_or_else(|| "none".to_owned());
    let bad = |k: &str, m: String| Err((Some(k.to_owned()), m));

    if batch_size == 0 {
        return bad("batch_size", "must be at least 1".into());
    }
    if let Err(m) = at_most(batch_size, MAX_BATCH_SIZE, "a batch") {
        return bad("batch_size", m);
    }
    if epochs == 0 {
        return bad("epochs", "must be at least 1".into());
    }
    if let Err(m) = at_most(epochs, MAX_EPOCHS, "the epochs of a run") {
        return bad("epochs", m);
    }
    if let Some(Head::Mlp { hidden, dropout }) = &f.head {
        for &w in hidden {
            if w == 0 {
                return bad("head.hidden", "a hidden layer needs at least 1 unit".into());
            }
            if let Err(m) = at_most(w, MAX_WIDTH, "the width of a hidden layer") {
                return bad("head.hidden", m);
            }
        }
        if let Some(p) = dropout.iter().find(|p| !(0.0..1.0).contains(*p)) {
            return bad("head.dropout", format!("each dropout must be in [0, 1), found {p}"));
        }
    }
    check_optimizer(&optimizer)?;
    check_schedule(&schedule)?;
    let val_split = f.val_split.unwrap_or(0.0);
    if !(0.0..1.0).contains(&val_split) {
        return bad("val_split", format!("must be in [0, 1), found {val_split}"));
    }
    // An image folder may have a validation folder of its own (val/ beside test/): the trainer
    // says so when it has none.
    if val_split == 0.0 && ctx.dataset.name != DatasetName::Folder {
        if ctx.metric.needs_validation() {
            return bad(
                "val_split",
                format!("metric = \"{}\" needs a validation split: set val_split (e.g. 0.1)", ctx.metric.as_str()),
            );
        }
        if let Some(m) = f.early_stop.as_ref().and_then(|es| es.metric).filter(|m| m.needs_validation()) {
            return bad("early_stop.metric", format!("`{}` needs a validation split: set val_split", m.as_str()));
        }
    }
    if let Some(es) = &f.early_stop {
        if es.patience == 0 {
            return bad("early_stop.patience", "must be at least 1".into());
        }
        if es.min_delta.is_nan() || es.min_delta < 0.0 {
            return bad("early_stop.min_delta", format!("must be >= 0, found {}", es.min_delta));
        }
    }
    if let Some(ls) = f.label_smoothing {
        if !(0.0..1.0).contains(&ls) {
            return bad("label_smoothing", format!("must be in [0, 1), found {ls}"));
        }
    }
    if let Some(w) = &f.warmup {
        if w.iters == 0 {
            return bad("warmup.iters", "must be at least 1".into());
        }
        if !(w.start_factor > 0.0 && w.start_factor <= 1.0) {
            return bad("warmup.start_factor", format!("must be in (0, 1], found {}", w.start_factor));
        }
        if matches!(schedule, ScheduleSpec::Onecycle { .. }) {
            return bad("warmup", "onecycle has its own warm-up phase (pct_start); remove `warmup`".into());
        }
    }
    let Some(set) = ctx.augment.get(&augment) else {
        return bad("augment", unknown_augment(&augment, &ctx.augment));
    };
    // One batch of input images must fit in memory (as f32), whatever the device.
    for (list, images) in [(&set.train, batch_size), (&set.test, batch_size.max(256))] {
        if let Some(side) = list.iter().rev().find_map(output_side) {
            let bytes = (images as u64).saturating_mul(12).saturating_mul((side as u64).saturating_pow(2));
            if bytes > MAX_BATCH_BYTES {
                return bad(
                    "batch_size",
                    format!(
                        "one batch of {images} images of {side}x{side} is {} GiB as f32, more than the limit of {} GiB",
                        bytes >> 30,
                        MAX_BATCH_BYTES >> 30
                    ),
                );
            }
        }
    }
    Ok(RunConfig {
        dataset: ctx.dataset.clone(),
        model,
        pretrained: f.pretrained.map(|p| resolve_pretrained(ctx.src, p)),
        freeze: f.freeze.unwrap_or_default(),
        freeze_bn: f.freeze_bn.unwrap_or(false),
        stem: f.stem.unwrap_or_default(),
        head: f.head.unwrap_or_default(),
        augment,
        train_transforms: set.train.clone(),
        test_transforms: set.test.clone(),
        batch_size,
        epochs,
        optimizer,
        schedule,
        warmup: f.warmup,
        lr_interval: f.lr_interval.unwrap_or_default(),
        precision: f.precision.unwrap_or_default(),
        label_smoothing: f.label_smoothing.unwrap_or(0.0),
        early_stop: f.early_stop,
        keep: f.keep.unwrap_or_default(),
        val_split: f.val_split.unwrap_or(0.0),
        drop_last: f.drop_last.unwrap_or(false),
        metric: ctx.metric,
        seed,
    })
}

/// `pretrained` is `imagenet` or a weights file, relative to the sweep file.
fn resolve_pretrained(src: &Source, p: String) -> String {
    let path = Path::new(&p);
    if p == "imagenet" || path.is_absolute() {
        return p;
    }
    let joined = src.path.parent().unwrap_or(Path::new(".")).join(path);
    std::path::absolute(&joined).unwrap_or(joined).display().to_string()
}

fn check_optimizer(o: &OptimizerSpec) -> Result<(), FinalizeError> {
    let err = |k: &str, m: String| Err((Some(format!("optimizer.{k}")), m));
    let lr = o.lr();
    if !(lr.is_finite() && lr > 0.0) {
        return err("lr", format!("the learning rate must be a positive number, found {lr}"));
    }
    if let Some(c) = o.clip_grad_norm() {
        if !(c.is_finite() && c > 0.0) {
            return err("clip_grad_norm", format!("must be a positive number, found {c}"));
        }
    }
    match o {
        OptimizerSpec::Sgd { momentum, dampening, nesterov, weight_decay, .. } => {
            if !(0.0..1.0).contains(momentum) {
                return err("momentum", format!("must be in [0, 1), found {momentum}"));
            }
            if *nesterov && (*momentum <= 0.0 || *dampening != 0.0) {
                return err(
                    "nesterov",
                    "Nesterov momentum requires a momentum > 0 and zero dampening (as in PyTorch)".into(),
                );
            }
            if !(0.0..=1.0).contains(dampening) {
                return err("dampening", format!("must be in [0, 1], found {dampening}"));
            }
            if *weight_decay < 0.0 {
                return err("weight_decay", format!("must be >= 0, found {weight_decay}"));
            }
        }
        OptimizerSpec::Adam { betas, eps, weight_decay, .. }
        | OptimizerSpec::Adamw { betas, eps, weight_decay, .. } => {
            if betas.iter().any(|b| !(0.0..1.0).contains(b)) {
                return err("betas", format!("each beta must be in [0, 1), found {betas:?}"));
            }
            if *eps <= 0.0 {
                return err("eps", format!("must be > 0, found {eps}"));
            }
            if *weight_decay < 0.0 {
                return err("weight_decay", format!("must be >= 0, found {weight_decay}"));
            }
        }
    }
    Ok(())
}

fn check_schedule(s: &ScheduleSpec) -> Result<(), FinalizeError> {
    let err = |k: &str, m: String| Err((Some(format!("schedule.{k}")), m));
    match s {
        ScheduleSpec::Constant => Ok(()),
        ScheduleSpec::Cosine { eta_min, .. } => {
            if *eta_min < 0.0 {
                return err("eta_min", format!("must be >= 0, found {eta_min}"));
            }
            Ok(())
        }
        ScheduleSpec::Onecycle {
            max_lr, pct_start, div_factor, final_div_factor, base_momentum, max_momentum, ..
        } => {
            if max_lr.is_some_and(|m| !(m.is_finite() && m > 0.0)) {
                return err("max_lr", "must be a positive number".into());
            }
            if !(*pct_start > 0.0 && *pct_start < 1.0) {
                return err("pct_start", format!("must be in (0, 1), found {pct_start}"));
            }
            if *div_factor <= 0.0 || *final_div_factor <= 0.0 {
                return err("div_factor", "div_factor and final_div_factor must be > 0".into());
            }
            for (k, m) in [("base_momentum", base_momentum), ("max_momentum", max_momentum)] {
                if !(0.0..=1.0).contains(m) {
                    return err(k, format!("must be in [0, 1], found {m}"));
                }
            }
            if base_momentum > max_momentum {
                return err("base_momentum", "must not exceed max_momentum".into());
            }
            Ok(())
        }
        ScheduleSpec::Step { step_size, gamma } => {
            if *step_size == 0 {
                return err("step_size", "must be at least 1".into());
            }
            if *gamma <= 0.0 {
                return err("gamma", format!("must be > 0, found {gamma}"));
            }
            Ok(())
        }
        ScheduleSpec::Multistep { milestones, factors, gamma } => {
            if milestones.windows(2).any(|w| w[0] >= w[1]) {
                return err("milestones", format!("must be strictly increasing, found {milestones:?}"));
            }
            if let Some(f) = factors.as_ref().and_then(|f| f.iter().find(|f| **f <= 0.0)) {
                return err("factors", format!("each factor must be > 0, found {f}"));
            }
            if let Some(g) = gamma.filter(|g| *g <= 0.0) {
                return err("gamma", format!("must be > 0, found {g}"));
            }
            match (factors, gamma) {
                (Some(_), Some(_)) => err("factors", "give either `factors` or `gamma`, not both".into()),
                (None, None) => {
                    err("factors", "give `factors` (one per milestone, relative to the base lr) or `gamma`".into())
                }
                (Some(f), None) if f.len() != milestones.len() => err(
                    "factors",
                    format!("{} factors for {} milestones: give one factor per milestone", f.len(), milestones.len()),
                ),
                _ => Ok(()),
            }
        }
    }
}

/// A transform's sizes are ones a real pipeline can allocate. (Its other
/// parameters, probabilities and ranges, are checked with the data's sizes by
/// `train::augment::output_size`, before anything is queued.)
pub(super) fn check_transform(t: &Transform) -> Result<(), String> {
    let side = |what: &str, v: usize| {
        if v == 0 {
            Err(format!("{what}: the size must be at least 1"))
        } else {
            at_most(v, MAX_IMAGE_SIDE, "an image side in pixels").map_err(|m| format!("{what}: {m}"))
        }
    };
    match t {
        Transform::Resize { size } => side("resize", *size),
        Transform::CenterCrop { size } => side("center_crop", *size),
        Transform::RandomCrop { size, padding, .. } => {
            side("random_crop", *size)?;
            at_most(*padding, MAX_IMAGE_SIDE, "padding in pixels").map_err(|m| format!("random_crop: {m}"))
        }
        Transform::Cutout { size, .. } => side("cutout", *size),
        _ => Ok(()),
    }
}

/// The side of the square a sizing transform produces (resize: the shorter side).
fn output_side(t: &Transform) -> Option<usize> {
    match t {
        Transform::Resize { size } | Transform::CenterCrop { size } | Transform::RandomCrop { size, .. } => Some(*size),
        _ => None,
    }
}

/// The sweep's dataset, checked (fields that fit its kind, sizes within bounds)
/// and with a relative path made absolute (relative to the sweep file).
pub(super) fn resolve_dataset(src: &Source, mut ds: DatasetSpec, errors: &mut Vec<SpecError>) -> DatasetSpec {
    let offset = key_offset(&src.text, "dataset");
    let mut bad = |field: &str, msg: &str| errors.push(src.error(offset, Some(&format!("dataset.{field}")), msg));
    if ds.name == DatasetName::Synthetic && ds.path.is_some() {
        bad("path", "the synthetic dataset is generated and takes no `path`");
    }
    if !matches!(ds.name, DatasetName::Synthetic | DatasetName::Folder) && ds.data_seed.is_some() {
        bad("data_seed", "`data_seed` is for the synthetic dataset and a folder's `test_split`");
    }
    if ds.name != DatasetName::Folder && ds.test_split.is_some() {
        bad("test_split", "`test_split` is only for an image folder with a single <class>/ tree");
    }
    if ds.name != DatasetName::Folder && ds.skip_unreadable {
        bad("skip_unreadable", "`skip_unreadable` is only for an image folder: `dataset = { folder = \"PATH\", ... }`");
    }
    if ds.name != DatasetName::Folder && ds.resize.is_some() {
        bad("resize", "`resize` (at load) is only for an image folder; resize in the augmentation set instead");
    }
    if let Some(side) = ds.resize {
        if side == 0 || side > MAX_IMAGE_SIDE {
            bad("resize", &format!("must be between 1 and {MAX_IMAGE_SIDE} pixels, found {side}"));
        }
    }
    if let Some(t) = ds.test_split {
        if !(t > 0.0 && t < 1.0) {
            bad("test_split", &format!("must be in (0, 1), found {t}"));
        }
    }
    if ds.name == DatasetName::Folder && ds.path.as_deref().is_none_or(str::is_empty) {
        bad("folder", "an image folder needs its path: `dataset = { folder = \"PATH\" }`");
    }
    if let Some(p) = &ds.path {
        let p = Path::new(p);
        if p.is_relative() {
            let base = src.path.parent().unwrap_or(Path::new("."));
            let joined = base.join(p);
            let abs = std::path::absolute(&joined).unwrap_or(joined);
            ds.path = Some(abs.display().to_string());
        }
    }
    let generated = ds.train_size.unwrap_or(0).saturating_add(ds.test_size.unwrap_or(0));
    let within = [ds.train_size, ds.test_size].iter().flatten().all(|&n| n <= MAX_IMAGES);
    if ds.name == DatasetName::Synthetic && within && generated > MAX_SYNTHETIC_IMAGES {
        let msg = format!(
            "{generated} generated images is more than the limit of {MAX_SYNTHETIC_IMAGES} (they are held in memory)"
        );
        bad("train_size", &msg);
    }
    for (field, v) in [("train_size", ds.train_size), ("test_size", ds.test_size)] {
        match v {
            Some(0) => bad(field, "must be at least 1"),
            Some(n) if n > MAX_IMAGES => {
                bad(field, &format!("{n} images is more than the limit of {MAX_IMAGES} for a split"));
            }
            _ => {}
        }
    }
    ds
}
