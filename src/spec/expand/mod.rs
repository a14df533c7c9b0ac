//! Merging defaults with grids and runs, and validating each resulting run.
//!
//! `grid` expands `[[grid]]` and `[[run]]` tables into assignments, `paths`
//! edits TOML tables by dotted path, `validate` turns one merged table into a
//! checked [`RunConfig`]; this file drives them and owns the result types.
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

use super::config::{DatasetName, DatasetSpec, Metric, OptimizerSpec, RunConfig, ScheduleSpec};
use super::device::DeviceChoice;
use super::file::{AugmentSet, DefaultsOnly, RunFields, SpannedTable, SweepFile, RUN_RESERVED};
use super::key::{run_key, RunKey};
use super::limits::MAX_REPEATS;
use super::{Options, Override};
use super::{Source, SpecError, SpecErrors};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use toml::{Spanned, Table, Value};

mod finite;
mod grid;
mod paths;
mod rerun;
mod search;
mod validate;

pub use search::{Method as SearchMethod, Search, TrialRef};

pub use rerun::next_repeat;

use grid::{expand_grid, expand_run};
pub use paths::set_path;
use validate::finalize;

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
    /// The device the file asks for, if any.
    pub device: Option<DeviceChoice>,
    /// The runs, in file order, without duplicates.
    pub runs: Vec<PlannedRun>,
    /// Names of runs dropped because an earlier run has the same configuration.
    pub duplicates: Vec<String>,
    /// The `[[search]]` blocks (their expanded trials are among `runs`).
    pub searches: Vec<Search>,
    /// `early_terminate`: ASHA across the sweep's runs.
    pub early_terminate: Option<EarlyTerminate>,
    /// The trial [`Options::trial`] asked for (a TPE proposal), built but not among `runs`.
    pub proposed: Option<PlannedRun>,
}

impl SweepSpec {
    /// An error about the file's `dataset`, at the line that sets it.
    pub fn dataset_error(&self, message: impl Into<String>) -> SpecError {
        let src = Source { path: self.path.clone(), text: self.text.clone() };
        src.error(key_offset(&self.text, "dataset"), Some("dataset"), message)
    }
}

/// `early_terminate = { method = "asha", … }`: asynchronous successive halving.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EarlyTerminate {
    /// Only `asha`.
    pub method: EarlyTerminateMethod,
    /// The metric compared at each rung (default: the sweep's metric).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<Metric>,
    /// The first rung, in epochs (default 1).
    #[serde(default = "one")]
    pub min_epochs: u64,
    /// η (default 3): a third of the runs go on from each rung.
    #[serde(default = "three")]
    pub reduction_factor: u64,
}

/// The early-termination methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EarlyTerminateMethod {
    /// Asynchronous successive halving (Ray Tune's `ASHAScheduler`, W&B's `hyperband`).
    Asha,
}

fn one() -> u64 {
    1
}
fn three() -> u64 {
    3
}

impl EarlyTerminate {
    /// The metric it compares, given the sweep's.
    pub fn metric_or(&self, sweep: Metric) -> Metric {
        self.metric.unwrap_or(sweep)
    }

    /// The pure decision rules.
    pub fn asha(&self) -> crate::search::asha::Asha {
        crate::search::asha::Asha { min_epochs: self.min_epochs, reduction_factor: self.reduction_factor }
    }
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
    /// Its place in a search (random or TPE), if it is one of its trials.
    pub trial: Option<TrialRef>,
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
pub(super) const RUN_KEYS: &[&str] = &[
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

/// What expanding one file carries along: its defaults, sets and the errors found.
pub(super) struct Ctx<'a> {
    pub(super) src: &'a Source,
    pub(super) defaults: Table,
    pub(super) augment: BTreeMap<String, AugmentSet>,
    pub(super) dataset: DatasetSpec,
    pub(super) metric: Metric,
    pub(super) seed: u64,
    pub(super) repeats: u32,
    pub(super) errors: Vec<SpecError>,
    /// The most runs the file may expand to, and how many it has so far.
    pub(super) max_runs: usize,
    pub(super) planned: usize,
    /// `--set` overrides, applied to every run (a list: once per value).
    pub(super) overrides: Vec<Override>,
}

/// The most errors of the file's shape reported in one pass.
const MAX_SHAPE_ERRORS: usize = 50;

/// Parses the file's shape, reporting every wrong key or value at once: after
/// each error of one key or value (an unknown field, a wrong type), its lines
/// are blanked out (offsets and line numbers stay) and the text is parsed
/// again, while it is still valid TOML. Returns the errors and the text left.
fn shape_errors(src: &Source) -> (Vec<SpecError>, Source, Vec<String>) {
    let mut text = src.text.clone().into_bytes();
    let mut errors = Vec::new();
    let mut blanked = Vec::new();
    let as_str = |t: &[u8]| String::from_utf8(t.to_vec()).expect("blanking keeps UTF-8");
    loop {
        let current = as_str(&text);
        let parsed = toml::from_str::<SweepFile>(&current).and_then(|_| toml::from_str::<DefaultsOnly>(&current));
        let Err(e) = parsed else { break };
        let span = e.span();
        let missing = e.message().trim().strip_prefix("missing field `").and_then(|m| m.strip_suffix('`'));
        if missing.is_some_and(|k| blanked.iter().any(|b| b == k)) {
            // Only the blanking's doing (`dataset = "CIFAR10"` blanked): the
            // real error is already reported.
            break;
        }
        errors.push(src.error(span.as_ref().map_or(0, |s| s.start), None, with_belongs_hint(e.message().trim())));
        let Some(span) = span else { break };
        if errors.len() >= MAX_SHAPE_ERRORS {
            break;
        }
        // Blank the whole lines the error covers.
        let start = current[..span.start.min(current.len())].rfind('\n').map_or(0, |i| i + 1);
        let mut end = current[span.end.min(current.len())..].find('\n').map_or(current.len(), |i| span.end + i);
        if ["grid", "run", "search"].iter().any(|n| e.message().trim() == crate::spec::file::one_table_message(n)) {
            // `[grid]` for `[[grid]]`: its keys go with it, or the next parse
            // would read them as the table above's.
            end = table_end(&current, end);
        }
        for line in current[start..end].lines() {
            if let Some((k, _)) = line.split_once('=') {
                let k = k.trim().trim_matches('"');
                blanked.push(k.split('.').next().unwrap_or(k).to_owned());
            }
        }
        if text[start..end].iter().all(|b| matches!(b, b' ' | b'\n')) {
            // Nothing left to blank there (a missing sweep-level key is about
            // the file's first line): the next parse would say the same.
            break;
        }
        for b in text[start..end].iter_mut().filter(|b| **b != b'\n') {
            *b = b' ';
        }
        // What is left must still be TOML, or the next error would only be
        // the blanking's: stop with the real ones.
        if as_str(&text).parse::<toml::Table>().is_err() {
            break;
        }
    }
    (errors, Source { path: src.path.clone(), text: as_str(&text) }, blanked)
}

/// Where the table whose header line ends at `from` ends: the start of the
/// next header line (`[...]` at the start of a line), else the end of the text.
fn table_end(text: &str, from: usize) -> usize {
    let mut at = from;
    for line in text[from..].split_inclusive('\n') {
        if at > from && line.trim_start().starts_with('[') {
            return at.saturating_sub(1);
        }
        at += line.len();
    }
    text.len()
}

/// Whether an error of the blanked text is only about a key that was blanked
/// out (`no `optimizer` given` after `optimizer = {…}` was): not reported.
fn about_blanked(e: &SpecError, blanked: &[String]) -> bool {
    blanked.iter().any(|k| {
        e.key.as_deref().is_some_and(|ek| ek.split('.').any(|seg| seg == k)) || e.message.contains(&format!("`{k}`"))
    })
}

pub(super) fn expand(src: &Source, options: &Options) -> Result<SweepSpec, SpecErrors> {
    let (mut shape, rest, blanked) = shape_errors(src);
    if shape.is_empty() {
        return expand_valid(src, options);
    }
    // Go on with what is left, for the errors of the rest of the file (an
    // unknown model, a bad value in a grid) in the same pass.
    let more = match expand_valid(&rest, options) {
        Err(SpecErrors(more)) => more,
        Ok(spec) => untrainable(&rest, &spec.runs, options),
    };
    for e in more {
        if !about_blanked(&e, &blanked) && !shape.iter().any(|s| s.line == e.line && s.message == e.message) {
            shape.push(e);
        }
    }
    shape.sort_by_key(|e| (e.line, e.column));
    Err(SpecErrors(shape))
}

/// The runs [`Options::check`] refuses, as errors at their lines.
fn untrainable(src: &Source, runs: &[PlannedRun], options: &Options) -> Vec<SpecError> {
    let Some(check) = options.check else { return Vec::new() };
    runs.iter()
        .filter_map(|r| {
            check(&r.config).err().map(|msg| SpecError {
                file: src.path.clone(),
                line: r.line,
                column: r.column,
                key: None,
                message: format!("run `{}`: {msg}", r.name),
            })
        })
        .collect()
}

fn expand_valid(src: &Source, options: &Options) -> Result<SweepSpec, SpecErrors> {
    let limits = options.limits;
    let toml_error = |e: toml::de::Error| {
        let offset = e.span().map_or(0, |s| s.start);
        SpecErrors(vec![src.error(offset, None, e.message().trim().to_owned())])
    };
    let file: SweepFile = toml::from_str(&src.text).map_err(toml_error)?;
    let _: DefaultsOnly = toml::from_str(&src.text).map_err(toml_error)?;

    let mut errors = finite::non_finite(src);
    // The first errors: a `nan` is said once, by its own check, not again by a range check of its key.
    let n_non_finite = errors.len();
    let device = match &file.device {
        None => None,
        Some(d) => match d.get_ref().parse::<DeviceChoice>() {
            Ok(choice) => Some(choice),
            Err(e) => {
                errors.push(src.error(d.span().start, Some("device"), e.to_string()));
                None
            }
        },
    };
    let name = match &file.name {
        Some(n) => {
            let name = n.get_ref().trim().to_owned();
            if name.is_empty() {
                errors.push(src.error(n.span().start, Some("name"), "the sweep name is empty"));
            }
            name
        }
        None => {
            errors.push(src.error(0, None, "missing field `name`: the sweep's name, e.g. name = \"lr-study\" (the handle for --sweep NAME), before the first [table]"));
            String::new()
        }
    };
    let dataset = match file.dataset {
        Some(d) => validate::resolve_dataset(src, d, &mut errors),
        None => {
            errors.push(src.error(0, None, "missing field `dataset`: what the runs train on, e.g. dataset = \"cifar10\" or \"synthetic\" or { folder = \"PATH\" }, before the first [table]"));
            DatasetSpec::named(DatasetName::Synthetic)
        }
    };
    let repeats = match &file.repeats {
        Some(r) if *r.get_ref() == 0 => {
            errors.push(src.error(r.span().start, Some("repeats"), "repeats must be at least 1"));
            1
        }
        Some(r) if *r.get_ref() > MAX_REPEATS => {
            let msg = format!("repeats = {} is more than the limit of {MAX_REPEATS}", r.get_ref());
            errors.push(src.error(r.span().start, Some("repeats"), msg));
            1
        }
        Some(r) => *r.get_ref(),
        None => 1,
    };
    let mut augment = file.augment.clone();
    augment.entry("none".to_owned()).or_default();
    for (set_name, set) in &file.augment {
        for (which, list) in [("train", &set.train), ("test", &set.test)] {
            for t in list {
                if let Err(msg) = validate::check_transform(t) {
                    let offset = key_offset(&src.text, &format!("[augment.{set_name}]"));
                    errors.push(src.error(offset, Some(&format!("augment.{set_name}.{which}")), msg));
                }
            }
        }
    }

    let mut ctx = Ctx {
        src,
        defaults: file.defaults.map(Spanned::into_inner).unwrap_or_default(),
        augment,
        dataset,
        metric: file.metric.unwrap_or(Metric::TestAcc),
        seed: file.seed,
        repeats,
        errors,
        max_runs: limits.max_runs,
        planned: 0,
        overrides: options.overrides.clone(),
    };
    ctx.check_overrides();
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
    let mut searches = Vec::new();
    for (i, block) in file.search.iter().enumerate() {
        searches.extend(search::expand_search(&mut ctx, i, block, &mut runs));
    }
    let early_terminate = file.early_terminate.as_ref().map(|et| {
        let at = et.span().start;
        let et = *et.get_ref();
        if et.min_epochs == 0 {
            ctx.errors.push(src.error(at, Some("early_terminate.min_epochs"), "must be at least 1"));
        }
        if et.reduction_factor < 2 {
            let msg = format!("must be at least 2 (a share of 1/{} go on from each rung)", et.reduction_factor);
            ctx.errors.push(src.error(at, Some("early_terminate.reduction_factor"), msg));
        }
        if let Some(m) = et.metric {
            if m.needs_validation() && !runs.iter().all(|r| r.config.val_split > 0.0) {
                let msg = format!("metric = \"{}\" needs a validation split in every run: set val_split", m.as_str());
                ctx.errors.push(src.error(at, Some("early_terminate.metric"), msg));
            }
        }
        et
    });
    let proposed = options.trial.as_ref().and_then(|t| {
        let s = searches.iter().find(|s| s.index == t.search)?;
        search::proposed_run(&mut ctx, s, t.number, &t.params)
    });
    if file.grid.is_empty() && file.run.is_empty() && file.search.is_empty() && ctx.plan(0, u64::from(ctx.repeats)) {
        let defaults = ctx.defaults.clone();
        let at = key_offset(&src.text, "[defaults]");
        for r in 0..ctx.repeats {
            let name =
                if ctx.repeats > 1 { format!("default,seed={}", ctx.seed + u64::from(r)) } else { "default".into() };
            push_run(&mut ctx, name, defaults.clone(), r, at, None, &mut runs);
        }
    }

    if !ctx.errors.is_empty() {
        // The file is refused anyway: say what else is wrong with the runs
        // that did expand (an unknown model), in the same pass.
        ctx.errors.extend(untrainable(src, &runs, options));
        let rest = ctx.errors.split_off(n_non_finite);
        let said = |e: &SpecError| ctx.errors.iter().any(|f| f.line == e.line && f.key == e.key);
        let rest: Vec<SpecError> = rest.into_iter().filter(|e| !said(e)).collect();
        ctx.errors.extend(rest);
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
        device,
        runs: unique,
        duplicates,
        searches,
        early_terminate,
        proposed,
    })
}

/// Byte offset of the first line that starts with `key` (for messages about
/// values that serde cannot span).
pub(super) fn key_offset(text: &str, key: &str) -> usize {
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

/// An error about an override (it names the override, not a line).
fn override_error(o: &Override, message: &str) -> SpecError {
    let message = super::limits::quote_message(message);
    SpecError { file: PathBuf::from(o.to_string()), line: 0, column: 0, key: Some(o.path.clone()), message }
}

/// The offset of the line that sets `key` in the table whose header is at
/// `header` (up to the next `[` header), if there is one.
fn key_in_block(text: &str, header: usize, key: &str) -> Option<usize> {
    let start = text.get(header..)?.find('\n').map(|n| header + n + 1)?;
    let mut offset = start;
    for line in text[start..].split_inclusive('\n') {
        let trimmed = line.trim_start();
        if trimmed.starts_with('[') {
            return None;
        }
        let after = trimmed.strip_prefix(key).unwrap_or("-");
        if after.trim_start().starts_with(['=', '.']) {
            return Some(offset + (line.len() - trimmed.len()));
        }
        offset += line.len();
    }
    None
}

/// Where a key written at a run's level belongs, when that is known: the
/// optimizer's and the schedule's fields (`lr = 0.1`: `optimizer.lr`), the
/// dataset's sizes, the file's own settings, and seeds (W&B sweeps a `seed`
/// parameter; here `repeats` gives each run its seeds). A phrase that follows
/// the key's name.
fn misplaced(key: &str) -> Option<String> {
    const SEEDS: &str = "is not a run setting: `repeats = N` (at the top of the file, or in a grid or run) trains \
                         each run N times, with seeds seed, seed+1, ..., seed+N-1; the top-level `seed` sets the first";
    let table = |table: &str| {
        let field = if key == "learning_rate" { "lr" } else { key };
        format!("belongs to a table: write `{table}.{field}`")
    };
    Some(match key {
        "lr" | "learning_rate" | "momentum" | "weight_decay" | "nesterov" | "dampening" | "betas" | "eps"
        | "amsgrad" | "clip_grad_norm" | "decay_bn_bias" => table("optimizer"),
        "milestones" | "gamma" | "factors" | "step_size" | "t_max" | "eta_min" | "max_lr" => table("schedule"),
        "seed" | "seeds" => SEEDS.to_owned(),
        "train_size" | "test_size" | "data_seed" | "test_split" | "skip_unreadable" => {
            format!("belongs to the dataset: `dataset = {{ name = \"...\", {key} = ... }}` at the top of the file")
        }
        "metric" | "device" | "description" => {
            "is the file's own setting: write it at the top of the file, before any table".to_owned()
        }
        _ => return None,
    })
}

/// An unknown run-level key, with where it belongs when that is known.
fn unknown_key(root: &str) -> String {
    match misplaced(root) {
        Some(advice) => format!("unknown key `{root}`; it {advice}"),
        None => format!("unknown key `{root}`; a run can set: {}", RUN_KEYS.join(", ")),
    }
}

/// toml's "unknown field `lr`, expected one of …" of a typed table, with
/// where the field belongs when that is known.
fn with_belongs_hint(message: &str) -> String {
    // Only in a run's own table (`[defaults]`: its keys are the ones
    // expected), not inside the optimizer's (Adam's `momentum`).
    let run_level = message.contains("`optimizer`, `schedule`");
    let field = message.strip_prefix("unknown field `").and_then(|m| m.split('`').next()).filter(|_| run_level);
    let advice = field.and_then(|f| {
        // `repeats` is a grid's or a run's (and the file's), not [defaults]'.
        let repeats = "is set at the top of the file or in a grid or run, not in [defaults]";
        if f == "repeats" {
            Some(repeats.to_owned())
        } else {
            misplaced(f)
        }
    });
    match advice {
        Some(advice) => format!("{message} (`{}` {advice})", field.unwrap_or_default()),
        None => message.to_owned(),
    }
}

pub(super) fn unknown_augment(name: &str, sets: &BTreeMap<String, AugmentSet>) -> String {
    let known: Vec<_> = sets.keys().map(|k| format!("`{k}`")).collect();
    format!("no augmentation set named `{name}`; defined: {} (add an [augment.{name}] table)", known.join(", "))
}

impl Ctx<'_> {
    /// Checks that `path = value` alone, on top of the defaults, is well typed.
    pub(super) fn check_assignment(&mut self, offset: usize, path: &str, value: &Value) {
        let root = path.split('.').next().unwrap_or_default();
        if !RUN_KEYS.contains(&root) {
            // Once per key, not once per value of its axis.
            let e = self.src.error(offset, Some(path), unknown_key(root));
            if !self.errors.contains(&e) {
                self.errors.push(e);
            }
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

    /// Counts `runs` more runs for the table at `offset`; false (with an
    /// error) when that takes the file over its limit, so nothing is built.
    pub(super) fn plan(&mut self, offset: usize, runs: u64) -> bool {
        let per_run = self.overrides.iter().fold(1u64, |n, o| n.saturating_mul(o.values.len() as u64));
        let total = (self.planned as u64).saturating_add(runs.saturating_mul(per_run));
        if total > self.max_runs as u64 {
            let msg = format!(
                "this expands the sweep to {total} runs, more than the limit of {} (raise it with --max-runs)",
                self.max_runs
            );
            self.errors.push(self.src.error(offset, None, msg));
            return false;
        }
        self.planned = total as usize;
        true
    }

    /// Each override's key is one a run can set and each value is well typed
    /// on top of the defaults, as a grid axis value is. An override with an
    /// error is then left out, so that its error is not repeated by every run
    /// it would have been applied to.
    fn check_overrides(&mut self) {
        let mut errors = Vec::new();
        let mut bad = Vec::new();
        for (i, o) in self.overrides.iter().enumerate() {
            let root = o.path.split('.').next().unwrap_or_default();
            if !RUN_KEYS.contains(&root) {
                errors.push(override_error(o, &unknown_key(root)));
                bad.push(i);
                continue;
            }
            for value in &o.values {
                let mut merged = self.defaults.clone();
                set_path(&mut merged, &o.path, value.clone());
                if let Err(e) = RunFields::deserialize(Value::Table(merged)) {
                    errors.push(override_error(o, &format!("value {value}: {}", e.message().trim())));
                    if bad.last() != Some(&i) {
                        bad.push(i);
                    }
                }
            }
        }
        for i in bad.into_iter().rev() {
            self.overrides.remove(i);
        }
        self.errors.extend(errors);
    }

    pub(super) fn repeats_of(&mut self, table: &SpannedTable) -> u32 {
        match table.iter().find(|(k, _)| k.get_ref() == "repeats") {
            None => self.repeats,
            Some((k, v)) => match v.get_ref().as_integer() {
                Some(n) if n >= 1 && n <= i64::from(MAX_REPEATS) => n as u32,
                _ => {
                    self.errors.push(self.src.error(
                        k.span().start,
                        Some("repeats"),
                        format!("repeats must be an integer from 1 to {MAX_REPEATS}"),
                    ));
                    1
                }
            },
        }
    }
}

pub(super) fn reserved_str(ctx: &mut Ctx, table: &SpannedTable, key: &str) -> Option<String> {
    let (k, v) = table.iter().find(|(k, _)| k.get_ref() == key)?;
    if let Some(s) = v.get_ref().as_str() {
        Some(s.to_owned())
    } else {
        ctx.errors.push(ctx.src.error(k.span().start, Some(key), format!("`{key}` must be a string")));
        None
    }
}

pub(super) fn push_run(
    ctx: &mut Ctx,
    name: String,
    merged: Table,
    repeat: u32,
    offset: usize,
    reference: Option<Reference>,
    runs: &mut Vec<PlannedRun>,
) {
    // Every combination of the overrides' values, the file's value replaced.
    let mut variants = vec![(name, merged)];
    for o in &ctx.overrides {
        let mut next = Vec::with_capacity(variants.len() * o.values.len());
        for (name, table) in &variants {
            for v in &o.values {
                let mut t = table.clone();
                set_path(&mut t, &o.path, v.clone());
                let n = if o.values.len() > 1 {
                    format!("{name},{}={}", paths::label(&o.path), paths::short(v))
                } else {
                    name.clone()
                };
                next.push((n, t));
            }
        }
        variants = next;
    }
    let mut reference = reference;
    let last = variants.len().saturating_sub(1);
    for (i, (name, merged)) in variants.into_iter().enumerate() {
        let r = if i == last { reference.take() } else { reference.clone() };
        push_one(ctx, name, merged, repeat, offset, r, runs);
    }
}

fn push_one(
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
            runs.push(PlannedRun { name, key: run_key(&config), config, reference, line, column, trial: None });
        }
        Err((key, msg)) => {
            // Reported once per place: the same problem repeats for every combination.
            // At the key's own line when the table (or else [defaults]) sets it.
            let at = key.as_deref().and_then(|k| {
                let root = k.split('.').next().unwrap_or(k);
                key_in_block(&ctx.src.text, offset, root)
                    .or_else(|| key_in_block(&ctx.src.text, key_offset(&ctx.src.text, "[defaults]"), root))
            });
            let by_override = key.as_deref().and_then(|k| {
                ctx.overrides.iter().find(|o| {
                    k == o.path || k.starts_with(&format!("{}.", o.path)) || o.path.starts_with(&format!("{k}."))
                })
            });
            let err = match by_override {
                Some(o) => override_error(o, &format!("run `{name}`: {msg}")),
                None => ctx.src.error(at.unwrap_or(offset), key.as_deref(), format!("run `{name}`: {msg}")),
            };
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
