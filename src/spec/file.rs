//! The serde mirror of the sweep file, with spans for error messages.
//!
//! Sweep-level keys and named augmentation sets are typed here, so toml's own
//! errors (with their spans) cover them. `[defaults]`, `[[grid]]` and `[[run]]`
//! tables are kept as spanned TOML values because they are merged before they are
//! typed; [`RunFields`] is the typed form of such a merged table.

use super::config::{
    deserialize_dataset, DatasetSpec, EarlyStop, Freeze, Head, Keep, LrInterval, Metric, OptimizerSpec, Precision,
    ScheduleSpec, Stem, Transform, Warmup,
};
use serde::Deserialize;
use std::collections::BTreeMap;
use toml::Spanned;

/// A TOML table whose keys and values keep their byte spans.
pub type SpannedTable = BTreeMap<Spanned<String>, Spanned<toml::Value>>;

/// The whole sweep file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepFile {
    /// Sweep name: the handle for `results --sweep` and `report --sweep`
    /// (required: optional here so that its absence is one error among the
    /// file's others, not the end of the check).
    #[serde(default)]
    pub name: Option<Spanned<String>>,
    /// Free text shown in reports.
    #[serde(default)]
    pub description: Option<String>,
    /// The dataset every run trains on (required, as `name`).
    #[serde(default, deserialize_with = "some_dataset")]
    pub dataset: Option<DatasetSpec>,
    /// The metric that defines the best epoch (default `test_acc`).
    #[serde(default)]
    pub metric: Option<Metric>,
    /// Where `sweep submit` trains when `--device` is not given: `auto`
    /// (default), `cpu` or `cuda:N`. Not part of any run's key.
    #[serde(default)]
    pub device: Option<Spanned<String>>,
    /// Base seed; repeat `r` of a run uses `seed + r`.
    #[serde(default)]
    pub seed: u64,
    /// Seeds per run (default 1); a grid or run may override it.
    #[serde(default)]
    pub repeats: Option<Spanned<u32>>,
    /// Values every run starts from.
    #[serde(default)]
    pub defaults: Option<Spanned<toml::Table>>,
    /// Named augmentation sets.
    #[serde(default)]
    pub augment: BTreeMap<String, AugmentSet>,
    /// Grids: each key a list of values, crossed.
    #[serde(default, deserialize_with = "grid_blocks")]
    pub grid: Vec<Spanned<SpannedTable>>,
    /// Explicit single runs.
    #[serde(default, deserialize_with = "run_blocks")]
    pub run: Vec<Spanned<SpannedTable>>,
    /// Sampled searches: distributions per key, `method`, `count`.
    #[serde(default, deserialize_with = "search_blocks")]
    pub search: Vec<Spanned<SpannedTable>>,
    /// ASHA across the sweep's runs.
    #[serde(default)]
    pub early_terminate: Option<Spanned<super::expand::EarlyTerminate>>,
}

/// A given `dataset`.
fn some_dataset<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<DatasetSpec>, D::Error> {
    deserialize_dataset(d).map(Some)
}

/// The `[[grid]]` blocks; `[grid]` (one bracket, one table) is refused with the fix.
fn grid_blocks<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Spanned<SpannedTable>>, D::Error> {
    d.deserialize_any(Blocks("grid"))
}

/// The `[[run]]` blocks (see [`grid_blocks`]).
fn run_blocks<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Spanned<SpannedTable>>, D::Error> {
    d.deserialize_any(Blocks("run"))
}

/// The `[[search]]` blocks (see [`grid_blocks`]).
fn search_blocks<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Spanned<SpannedTable>>, D::Error> {
    d.deserialize_any(Blocks("search"))
}

/// The message for `[NAME]` written where `[[NAME]]` blocks belong.
pub(crate) fn one_table_message(name: &str) -> String {
    format!("`[{name}]` is a single table; a sweep file lists {name} blocks: write `[[{name}]]` (two brackets)")
}

/// Visits an array of tables, or says how to write one where a single table
/// was given (TOML's `[grid]` against `[[grid]]`: otherwise serde's "invalid
/// type: map, expected a sequence").
struct Blocks(&'static str);

impl<'de> serde::de::Visitor<'de> for Blocks {
    type Value = Vec<Spanned<SpannedTable>>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "[[{}]] blocks", self.0)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        Deserialize::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
        Err(serde::de::Error::custom(one_table_message(self.0)))
    }
}

/// Just `[defaults]`, typed: toml's errors then point inside it.
#[derive(Debug, Deserialize)]
pub struct DefaultsOnly {
    /// The typed defaults.
    #[serde(default)]
    pub defaults: Option<RunFields>,
}

/// A named augmentation set.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AugmentSet {
    /// Applied to training images, in order.
    #[serde(default)]
    pub train: Vec<Transform>,
    /// Applied to test images, in order.
    #[serde(default)]
    pub test: Vec<Transform>,
}

/// What `[defaults]`, a grid combination or a `[[run]]` may set, typed.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunFields {
    /// See [`super::RunConfig::model`].
    pub model: Option<String>,
    /// See [`super::RunConfig::pretrained`].
    pub pretrained: Option<String>,
    /// See [`super::RunConfig::freeze`].
    pub freeze: Option<Freeze>,
    /// See [`super::RunConfig::freeze_bn`].
    pub freeze_bn: Option<bool>,
    /// See [`super::RunConfig::stem`].
    pub stem: Option<Stem>,
    /// See [`super::RunConfig::head`].
    pub head: Option<Head>,
    /// Name of an `[augment.NAME]` set, or `none`.
    pub augment: Option<String>,
    /// See [`super::RunConfig::batch_size`].
    pub batch_size: Option<usize>,
    /// See [`super::RunConfig::epochs`].
    pub epochs: Option<usize>,
    /// See [`super::RunConfig::optimizer`].
    pub optimizer: Option<OptimizerSpec>,
    /// See [`super::RunConfig::schedule`].
    pub schedule: Option<ScheduleSpec>,
    /// See [`super::RunConfig::warmup`].
    pub warmup: Option<Warmup>,
    /// See [`super::RunConfig::val_split`].
    pub val_split: Option<f64>,
    /// See [`super::RunConfig::drop_last`].
    pub drop_last: Option<bool>,
    /// See [`super::RunConfig::keep`].
    pub keep: Option<Keep>,
    /// See [`super::RunConfig::early_stop`].
    pub early_stop: Option<EarlyStop>,
    /// See [`super::RunConfig::label_smoothing`].
    pub label_smoothing: Option<f64>,
    /// See [`super::RunConfig::lr_interval`].
    pub lr_interval: Option<LrInterval>,
    /// See [`super::RunConfig::precision`].
    pub precision: Option<Precision>,
}

/// Keys of a `[[run]]` table that are not run fields.
pub const RUN_RESERVED: &[&str] = &["name", "repeats", "reference"];
