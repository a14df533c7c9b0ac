//! Merging defaults with grids and runs, and validating each resulting run.
//!
//! Merge rule: a grid axis or run key sets a dotted path (`optimizer.lr`) in a
//! copy of `[defaults]`. Setting a table on a table merges them key by key,
//! except when both have a `name` and the names differ (another optimizer or
//! schedule): then the new table replaces the old one, so that SGD's momentum
//! never leaks into Adam.
//!
//! Every axis value is checked on its own against the defaults, so a bad value is
//! reported at its own line; problems that only a combination has (a missing
//! field, an inconsistent schedule) are reported at the grid's or run's header.

use super::config::*;
use super::file::{AugmentSet, DefaultsOnly, RunFields, SpannedTable, SweepFile, RUN_RESERVED};
use super::key::{run_key, RunKey};
use super::{Source, SpecError, SpecErrors};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use toml::{Spanned, Table, Value};

/// A validated sweep file, expanded into runs.
#[derive(Debug, Clone)]
pub struct SweepSpec {
    /// Sweep name.
    pub name: String,
    /// Free text.
    pub description: Option<String>,
    /// The file it came from.
    pub path: PathBuf,
    /// The file's text, stored with the sweep.
    pub text: String,
    /// The metric that defines "best".
    pub metric: Metric,
    /// The device the file asks for (`auto`, `cpu`, `cuda:N`), if any.
    pub device: Option<String>,
    /// The runs, in file order, without duplicates.
    pub runs: Vec<PlannedRun>,
    /// Names of runs dropped because an earlier run has the same configuration.
    pub duplicates: Vec<String>,
}

/// One run of a sweep, ready to queue.
#[derive(Debug, Clone)]
pub struct PlannedRun {
    /// Human-readable name, unique in its sweep.
    pub name: String,
    /// The full configuration.
    pub config: RunConfig,
    /// Hash of the configuration.
    pub key: RunKey,
    /// Published numbers to compare against, if the file gives them.
    pub reference: Option<Reference>,
    /// Where in the file this run comes from (1-based line).
    pub line: usize,
    /// Column of that place.
    pub column: usize,
}

/// Numbers to put beside a run's measured ones in reports (accuracies in percent).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reference {
    /// Best test accuracy, percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_acc: Option<f64>,
    /// Epoch (1-based) of the best test accuracy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_acc_epoch: Option<u32>,
    /// Best test loss.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_loss: Option<f64>,
    /// Epoch (1-based) of the best test loss.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_loss_epoch: Option<u32>,
    /// Best training accuracy, percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_acc: Option<f64>,
    /// Where the numbers come from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Anything else worth printing beside them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Keys a run may set (the fields of [`RunFields`]).
const RUN_KEYS: &[&str] = &[
    "model",
    "pretrained",
    "freeze",
    "freeze_bn",
    "stem",
    "head",
    "augment",
    "batch_size",
    "epochs",
    "optimizer",
    "schedule",
    "warmup",
    "lr_interval",
    "label_smoothing",
    "early_stop",
    "keep",
    "val_split",
    "drop_last",
    "precision",
];

struct Ctx<'a> {
    src: &'a Source,
    defaults: Table,
    augment: BTreeMap<String, AugmentSet>,
    dataset: DatasetSpec,
    metric: Metric,
    seed: u64,
    repeats: u32,
    errors: Vec<SpecError>,
}

/// One axis of a grid: a plain key or a zipped group; each option is a list of
/// (path, value) assignments.
struct Axis {
    options: Vec<Vec<(String, Value)>>,
}

pub(super) fn expand(src: &Source) -> Result<SweepSpec, SpecErrors> {
    let toml_error = |e: toml::de::Error| {
        let offset = e.span().map_or(0, |s| s.start);
        SpecErrors(vec![src.error(offset, None, e.message().trim().to_owned())])
    };
    let file: SweepFile = toml::from_str(&src.text).map_err(toml_error)?;
    let _: DefaultsOnly = toml::from_str(&src.text).map_err(toml_error)?;

    let mut errors = Vec::new();
    if let Some(d) = &file.device {
        if !super::valid_device(d.get_ref()) {
            let msg = format!("unknown device `{}`: use \"auto\", \"cpu\" or \"cuda:N\"", d.get_ref());
            errors.push(src.error(d.span().start, Some("device"), &msg));
        }
    }
    let name = file.name.get_ref().trim().to_owned();
    if name.is_empty() {
        errors.push(src.error(file.name.span().start, Some("name"), "the sweep name is empty"));
    }
    let dataset = resolve_dataset(src, file.dataset, &mut errors);
    let repeats = match &file.repeats {
        Some(r) if *r.get_ref() == 0 => {
            errors.push(src.error(r.span().start, Some("repeats"), "repeats must be at least 1"));
            1
        }
        Some(r) => *r.get_ref(),
        None => 1,
    };
    let mut augment = file.augment.clone();
    augment.entry("none".to_owned()).or_default();

    let mut ctx = Ctx {
        src,
        defaults: file.defaults.map(Spanned::into_inner).unwrap_or_default(),
        augment,
        dataset,
        metric: file.metric.unwrap_or(Metric::TestAcc),
        seed: file.seed,
        repeats,
        errors,
    };
    if let Some(aug) = ctx.defaults.get("augment").and_then(Value::as_str) {
        if !ctx.augment.contains_key(aug) {
            let offset = key_offset(&src.text, "augment");
            let msg = unknown_augment(aug, &ctx.augment);
            ctx.errors.push(src.error(offset, Some("defaults.augment"), msg));
        }
    }

    let mut runs = Vec::new();
    for (i, grid) in file.grid.iter().enumerate() {
        expand_grid(&mut ctx, i, grid, &mut runs);
    }
    for (i, run) in file.run.iter().enumerate() {
        expand_run(&mut ctx, i, run, &mut runs);
    }
    if file.grid.is_empty() && file.run.is_empty() {
        let defaults = ctx.defaults.clone();
        for r in 0..ctx.repeats {
            let name =
                if ctx.repeats > 1 { format!("default,seed={}", ctx.seed + u64::from(r)) } else { "default".into() };
            push_run(&mut ctx, name, defaults.clone(), r, 0, None, &mut runs);
        }
    }

    if !ctx.errors.is_empty() {
        return Err(SpecErrors(ctx.errors));
    }
    let mut seen = HashSet::new();
    let mut names = HashSet::new();
    let mut unique = Vec::new();
    let mut duplicates = Vec::new();
    for mut run in runs {
        if !seen.insert(run.key.clone()) {
            duplicates.push(run.name);
            continue;
        }
        if !names.insert(run.name.clone()) {
            run.name = format!("{}#{}", run.name, run.key.short());
            names.insert(run.name.clone());
        }
        unique.push(run);
    }
    Ok(SweepSpec {
        name,
        description: file.description,
        path: src.path.clone(),
        text: src.text.clone(),
        metric: ctx.metric,
        device: file.device.map(|d| d.into_inner()),
        runs: unique,
        duplicates,
    })
}

fn resolve_dataset(src: &Source, mut ds: DatasetSpec, errors: &mut Vec<SpecError>) -> DatasetSpec {
    let offset = key_offset(&src.text, "dataset");
    let mut bad = |field: &str, msg: &str| errors.push(src.error(offset, Some(&format!("dataset.{field}")), msg));
    if ds.name == DatasetName::Synthetic && ds.path.is_some() {
        bad("path", "the synthetic dataset is generated and takes no `path`");
    }
    if matches!(ds.name, DatasetName::Cifar10 | DatasetName::Cifar100) && ds.data_seed.is_some() {
        bad("data_seed", "`data_seed` is for the synthetic dataset and a folder's `test_split`");
    }
    if ds.name != DatasetName::Folder && ds.test_split.is_some() {
        bad("test_split", "`test_split` is only for an image folder with a single <class>/ tree");
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
    for (field, v) in [("train_size", ds.train_size), ("test_size", ds.test_size)] {
        if v == Some(0) {
            bad(field, "must be at least 1");
        }
    }
    ds
}

/// Byte offset of the first line that starts with `key` (for messages about
/// values that serde cannot span).
fn key_offset(text: &str, key: &str) -> usize {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        if trimmed.starts_with(key) {
            return offset + (line.len() - trimmed.len());
        }
        offset += line.len();
    }
    0
}

fn unknown_augment(name: &str, sets: &BTreeMap<String, AugmentSet>) -> String {
    let known: Vec<_> = sets.keys().map(|k| format!("`{k}`")).collect();
    format!("no augmentation set named `{name}`; defined: {} (add an [augment.{name}] table)", known.join(", "))
}

/// Sets a dotted path in a table (see the module doc for the merge rule).
pub fn set_path(table: &mut Table, path: &str, value: Value) {
    let mut parts = path.splitn(2, '.');
    let head = parts.next().unwrap_or_default();
    match parts.next() {
        Some(rest) => {
            let entry = table.entry(head.to_owned()).or_insert_with(|| Value::Table(Table::new()));
            if !entry.is_table() {
                *entry = Value::Table(Table::new());
            }
            if let Value::Table(inner) = entry {
                set_path(inner, rest, value);
            }
        }
        None => match (table.get_mut(head), value) {
            (Some(Value::Table(old)), Value::Table(new)) => {
                let renamed = matches!((old.get("name"), new.get("name")), (Some(a), Some(b)) if a != b);
                if renamed {
                    *old = new;
                } else {
                    for (k, v) in new {
                        set_path(old, &k, v);
                    }
                }
            }
            (_, value) => {
                table.insert(head.to_owned(), value);
            }
        },
    }
}

/// The value at a dotted path.
fn get_path<'t>(table: &'t Table, path: &str) -> Option<&'t Value> {
    let mut parts = path.splitn(2, '.');
    let head = parts.next()?;
    match (table.get(head), parts.next()) {
        (Some(v), None) => Some(v),
        (Some(Value::Table(t)), Some(rest)) => get_path(t, rest),
        _ => None,
    }
}

/// Equality that treats `1` and `1.0` as the same number.
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Integer(x), Value::Float(y)) | (Value::Float(y), Value::Integer(x)) => (*x as f64) == *y,
        _ => a == b,
    }
}

/// Flattens nested tables into (dotted path, leaf) pairs.
fn flatten(prefix: &str, value: &Value, out: &mut Vec<(String, Value)>) {
    match value {
        Value::Table(t) => {
            for (k, v) in t {
                let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(&path, v, out);
            }
        }
        other => out.push((prefix.to_owned(), other.clone())),
    }
}

/// Compact text of a value for run names.
fn short(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Integer(i) => i.to_string(),
        Value::Float(f) if *f != 0.0 && (f.abs() >= 1e5 || f.abs() < 1e-3) => format!("{f:e}"),
        Value::Float(f) => f.to_string(),
        Value::Boolean(b) => b.to_string(),
        other => other.to_string().replace(['\n', '"', ' '], ""),
    }
}

fn label(path: &str) -> &str {
    path.rsplit('.').next().unwrap_or(path)
}

impl Ctx<'_> {
    /// Checks that `path = value` alone, on top of the defaults, is well typed.
    fn check_assignment(&mut self, offset: usize, path: &str, value: &Value) {
        let root = path.split('.').next().unwrap_or_default();
        if !RUN_KEYS.contains(&root) {
            let msg = format!("unknown key `{root}`; a run can set: {}", RUN_KEYS.join(", "));
            self.errors.push(self.src.error(offset, Some(path), msg));
            return;
        }
        let mut merged = self.defaults.clone();
        set_path(&mut merged, path, value.clone());
        if let Err(e) = RunFields::deserialize(Value::Table(merged)) {
            let msg = format!("value {}: {}", value, e.message().trim());
            self.errors.push(self.src.error(offset, Some(path), msg));
            return;
        }
        if path == "augment" {
            if let Some(name) = value.as_str() {
                if !self.augment.contains_key(name) {
                    let msg = unknown_augment(name, &self.augment);
                    self.errors.push(self.src.error(offset, Some(path), msg));
                }
            }
        }
    }

    fn repeats_of(&mut self, table: &SpannedTable) -> u32 {
        match table.iter().find(|(k, _)| k.get_ref() == "repeats") {
            None => self.repeats,
            Some((k, v)) => match v.get_ref().as_integer() {
                Some(n) if n >= 1 && n <= u32::MAX as i64 => n as u32,
                _ => {
                    self.errors.push(self.src.error(
                        k.span().start,
                        Some("repeats"),
                        "repeats must be a positive integer",
                    ));
                    1
                }
            },
        }
    }
}

fn reserved_str(ctx: &mut Ctx, table: &SpannedTable, key: &str) -> Option<String> {
    let (k, v) = table.iter().find(|(k, _)| k.get_ref() == key)?;
    match v.get_ref().as_str() {
        Some(s) => Some(s.to_owned()),
        None => {
            ctx.errors.push(ctx.src.error(k.span().start, Some(key), format!("`{key}` must be a string")));
            None
        }
    }
}

fn expand_grid(ctx: &mut Ctx, index: usize, grid: &Spanned<SpannedTable>, runs: &mut Vec<PlannedRun>) {
    let errors_before = ctx.errors.len();
    let header = grid.span().start;
    let table = grid.get_ref();
    let gname = reserved_str(ctx, table, "name");
    let repeats = ctx.repeats_of(table);

    let mut entries: Vec<_> = table.iter().collect();
    entries.sort_by_key(|(k, _)| k.span().start);

    let mut axes = Vec::new();
    let mut axis_paths = Vec::new();
    let mut excludes: Vec<(usize, Vec<(String, Value)>)> = Vec::new();
    for (k, v) in entries {
        let key = k.get_ref().as_str();
        let offset = k.span().start;
        match key {
            // Not axes: handled above (`reserved_str`, `repeats_of`).
            "name" | "repeats" => {}
            "zip" => {
                let groups: Vec<&Value> = match v.get_ref() {
                    Value::Array(items) => items.iter().collect(),
                    t @ Value::Table(_) => vec![t],
                    _ => {
                        ctx.errors.push(ctx.src.error(
                            offset,
                            Some("zip"),
                            "`zip` must be a table of equally long lists, or a list of such tables",
                        ));
                        continue;
                    }
                };
                for group in groups {
                    let mut leaves = Vec::new();
                    flatten("", group, &mut leaves);
                    let mut len = None;
                    let mut ok = true;
                    for (path, arr) in &leaves {
                        match arr.as_array() {
                            Some(a) if len.is_none_or(|l| l == a.len()) && !a.is_empty() => len = Some(a.len()),
                            Some(a) => {
                                let msg = format!("zipped lists must have the same, non-zero length: `{path}` has {} values, expected {}", a.len(), len.unwrap_or(1));
                                ctx.errors.push(ctx.src.error(offset, Some(&format!("zip.{path}")), msg));
                                ok = false;
                            }
                            None => {
                                ctx.errors.push(ctx.src.error(
                                    offset,
                                    Some(&format!("zip.{path}")),
                                    format!("expected a list of values, found {arr}"),
                                ));
                                ok = false;
                            }
                        }
                    }
                    if !ok || leaves.is_empty() {
                        continue;
                    }
                    let n = len.unwrap_or(0);
                    let mut options = vec![Vec::new(); n];
                    for (path, arr) in leaves {
                        for (i, item) in arr.as_array().into_iter().flatten().enumerate() {
                            ctx.check_assignment(offset, &path, item);
                            options[i].push((path.clone(), item.clone()));
                        }
                        axis_paths.push(path);
                    }
                    axes.push(Axis { options });
                }
            }
            "exclude" => {
                let Some(items) = v.get_ref().as_array() else {
                    ctx.errors.push(ctx.src.error(
                        offset,
                        Some("exclude"),
                        "`exclude` must be a list of tables, e.g. [{ batch_size = 32, \"optimizer.lr\" = 0.1 }]",
                    ));
                    continue;
                };
                for item in items {
                    let mut leaves = Vec::new();
                    flatten("", item, &mut leaves);
                    if !item.is_table() || leaves.is_empty() {
                        ctx.errors.push(ctx.src.error(
                            offset,
                            Some("exclude"),
                            format!("each exclusion must be a non-empty table, found {item}"),
                        ));
                        continue;
                    }
                    excludes.push((offset, leaves));
                }
            }
            _ => {
                let mut leaves = Vec::new();
                flatten(key, v.get_ref(), &mut leaves);
                for (path, arr) in leaves {
                    let Some(values) = arr.as_array() else {
                        let msg = format!("a grid axis must be a list of values, found {arr}; write `{path} = [{arr}]` or set it in [defaults]");
                        ctx.errors.push(ctx.src.error(v.span().start, Some(&path), msg));
                        continue;
                    };
                    if values.is_empty() {
                        ctx.errors.push(ctx.src.error(
                            v.span().start,
                            Some(&path),
                            "an axis with no values would expand to no runs",
                        ));
                        continue;
                    }
                    for item in values {
                        ctx.check_assignment(offset, &path, item);
                    }
                    axis_paths.push(path.clone());
                    axes.push(Axis { options: values.iter().map(|x| vec![(path.clone(), x.clone())]).collect() });
                }
            }
        }
    }
    for (offset, ex) in &excludes {
        for (path, _) in ex {
            let related = axis_paths
                .iter()
                .any(|a| a == path || path.starts_with(&format!("{a}.")) || a.starts_with(&format!("{path}.")));
            if !related {
                let msg = format!("`{path}` is not an axis of this grid (axes: {})", axis_paths.join(", "));
                ctx.errors.push(ctx.src.error(*offset, Some("exclude"), msg));
            }
        }
    }

    if ctx.errors.len() > errors_before {
        // The combinations would repeat the same problems.
        return;
    }
    // Cartesian product, first axis outermost.
    let mut combos: Vec<Vec<(String, Value)>> = vec![Vec::new()];
    for axis in &axes {
        let mut next = Vec::with_capacity(combos.len() * axis.options.len());
        for combo in &combos {
            for option in &axis.options {
                let mut c = combo.clone();
                c.extend(option.iter().cloned());
                next.push(c);
            }
        }
        combos = next;
    }
    let mut used = vec![false; excludes.len()];
    for combo in combos {
        let mut merged = ctx.defaults.clone();
        for (path, value) in &combo {
            set_path(&mut merged, path, value.clone());
        }
        let mut excluded = false;
        for (i, (_, ex)) in excludes.iter().enumerate() {
            if ex.iter().all(|(p, v)| get_path(&merged, p).is_some_and(|m| same_value(m, v))) {
                used[i] = true;
                excluded = true;
            }
        }
        if excluded {
            continue;
        }
        let parts: Vec<String> = combo.iter().map(|(p, v)| format!("{}={}", label(p), short(v))).collect();
        let base = match (&gname, parts.is_empty()) {
            (Some(g), true) => g.clone(),
            (Some(g), false) => format!("{g}:{}", parts.join(",")),
            (None, true) => format!("grid{}", index + 1),
            (None, false) => parts.join(","),
        };
        for r in 0..repeats {
            let name = if repeats > 1 { format!("{base},seed={}", ctx.seed + u64::from(r)) } else { base.clone() };
            push_run(ctx, name, merged.clone(), r, header, None, runs);
        }
    }
    for (i, (offset, ex)) in excludes.iter().enumerate() {
        if !used[i] {
            let desc: Vec<_> = ex.iter().map(|(p, v)| format!("{p} = {v}")).collect();
            let msg =
                format!("this exclusion ({}) matches no combination of the grid: check its values", desc.join(", "));
            ctx.errors.push(ctx.src.error(*offset, Some("exclude"), msg));
        }
    }
}

fn expand_run(ctx: &mut Ctx, index: usize, run: &Spanned<SpannedTable>, runs: &mut Vec<PlannedRun>) {
    let errors_before = ctx.errors.len();
    let header = run.span().start;
    let table = run.get_ref();
    let name = reserved_str(ctx, table, "name").unwrap_or_else(|| format!("run{}", index + 1));
    let repeats = ctx.repeats_of(table);
    let mut reference = None;
    let mut merged = ctx.defaults.clone();
    let mut entries: Vec<_> = table.iter().collect();
    entries.sort_by_key(|(k, _)| k.span().start);
    for (k, v) in entries {
        let key = k.get_ref().as_str();
        let offset = k.span().start;
        if key == "reference" {
            match Reference::deserialize(v.get_ref().clone()) {
                Ok(r) => reference = Some(r),
                Err(e) => ctx.errors.push(ctx.src.error(offset, Some("reference"), e.message().trim().to_owned())),
            }
            continue;
        }
        if RUN_RESERVED.contains(&key) {
            continue;
        }
        // A run's value is set whole: `optimizer = { name = "sgd", … }` replaces an
        // Adam default, `head = { hidden = …, dropout = … }` is checked as one head.
        ctx.check_assignment(offset, key, v.get_ref());
        set_path(&mut merged, key, v.get_ref().clone());
    }
    if ctx.errors.len() > errors_before {
        return;
    }
    for r in 0..repeats {
        let rname = if repeats > 1 { format!("{name},seed={}", ctx.seed + u64::from(r)) } else { name.clone() };
        push_run(ctx, rname, merged.clone(), r, header, reference.clone(), runs);
    }
}

fn push_run(
    ctx: &mut Ctx,
    name: String,
    merged: Table,
    repeat: u32,
    offset: usize,
    reference: Option<Reference>,
    runs: &mut Vec<PlannedRun>,
) {
    match finalize(ctx, merged, ctx.seed + u64::from(repeat)) {
        Ok(config) => {
            let (line, column) = ctx.src.line_col(offset);
            runs.push(PlannedRun { name, key: run_key(&config), config, reference, line, column });
        }
        Err((key, msg)) => {
            // Reported once per place: the same problem repeats for every combination.
            let err = ctx.src.error(offset, key.as_deref(), format!("run `{name}`: {msg}"));
            let dup = ctx.errors.iter().any(|e| {
                e.line == err.line
                    && e.key == err.key
                    && e.message.split(": ").skip(1).eq(err.message.split(": ").skip(1))
            });
            if !dup {
                ctx.errors.push(err);
            }
        }
    }
}

type FinalizeError = (Option<String>, String);

fn finalize(ctx: &Ctx, merged: Table, seed: u64) -> Result<RunConfig, FinalizeError> {
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
    if epochs == 0 {
        return bad("epochs", "must be at least 1".into());
    }
    check_optimizer(&optimizer)?;
    check_schedule(&schedule)?;
    let val_split = f.val_split.unwrap_or(0.0);
    if !(0.0..1.0).contains(&val_split) {
        return bad("val_split", format!("must be in [0, 1), found {val_split}"));
    }
    if val_split == 0.0 {
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
        ScheduleSpec::Constant | ScheduleSpec::Cosine { .. } => Ok(()),
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
