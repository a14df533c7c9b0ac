//! Results and reports: read models from the store turned into text.
//!
//! Nothing here touches candle or writes to the database. [`Comparison`] gathers
//! the runs to show (with their epochs for a report); [`query`] filters, sorts
//! and groups them into a results table; the renderers write it out
//! ([`render`]: terminal table, CSV, JSON, Markdown; [`html`](mod@html): the
//! self-contained HTML report with the [`charts`] drawn by [`svg`]). By default
//! only the parameters that differ between the runs shown are listed (a
//! diff-only view), named by their last path segment.

pub mod charts;
pub mod format;
pub mod history;
pub mod html;
pub mod importance;
pub mod param_charts;
pub mod params;
pub mod query;
pub mod render;
pub mod svg;
pub use render::text_table;

pub use html::html;
pub use params::{differing, Params};
pub use render::{csv_epochs, json, markdown, render_table, results, results_json, ResultsFormat};

use crate::record::EpochRecord;
use crate::store::{RunRow, Status, Store, StoreError, SweepRow};
use serde_json::Value;

/// Everything a report shows.
#[derive(Debug, Clone)]
pub struct Comparison {
    /// The sweeps involved.
    pub sweeps: Vec<SweepRow>,
    /// The runs, with their epochs.
    pub runs: Vec<RunReport>,
    /// Config paths whose values differ between the runs (the diff-only columns).
    pub differing: Vec<String>,
    /// The test confusion matrix of the best run's best epoch, when recorded.
    pub best_confusion: Option<Vec<Vec<u64>>>,
    /// The config paths the sweeps' `[[search]]` blocks sample from a numeric
    /// distribution, with whether on a log scale ([`crate::spec::sampled_scales`];
    /// loaded with the epochs): the report's axes follow them.
    pub sampled_scales: std::collections::BTreeMap<String, bool>,
}

/// One run in a report.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// The run and its summary numbers.
    pub row: RunRow,
    /// Its configuration, flattened to `path -> value text`.
    pub params: Params,
    /// Its configuration as JSON (`Null` when loaded without epochs, for `results`).
    pub config: Value,
    /// Its epochs, in order.
    pub epochs: Vec<EpochRecord>,
    /// Whether it has the best metric among the runs shown.
    pub best: bool,
    /// The trial it is of a `[[search]]`, when it is one (loaded with the epochs).
    pub trial: Option<Trial>,
}

/// The metric that most of `runs` with a best value are ranked by (their
/// sweeps' `metric`); None when none has a best value.
pub(crate) fn main_metric<'a>(runs: impl IntoIterator<Item = &'a RunReport>) -> Option<String> {
    let mut metrics: Vec<&str> =
        runs.into_iter().filter(|r| r.row.best_metric.is_some()).map(|r| r.row.metric.as_str()).collect();
    metrics.sort_unstable();
    metrics.chunk_by(|a, b| a == b).max_by_key(|g| g.len()).and_then(|g| g.first().copied()).map(str::to_owned)
}

/// The metric most of `c`'s runs are ranked by ([`main_metric`]) and the
/// runs ranked by it that have a finite best value of it, with that value.
pub(crate) fn ranked_runs(c: &Comparison) -> Option<(String, Vec<(&RunReport, f64)>)> {
    let metric = main_metric(&c.runs)?;
    let runs = c
        .runs
        .iter()
        .filter(|r| r.row.metric == metric)
        .filter_map(|r| r.row.best_metric.filter(|v| v.is_finite()).map(|v| (r, v)))
        .collect();
    Some((metric, runs))
}

/// A run's place in a `[[search]]` (the `trials` table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trial {
    /// The search block's 0-based index in its sweep file.
    pub search: i64,
    /// The 0-based trial number.
    pub number: i64,
    /// `random` (a random search's trials, TPE's start-up ones) or `tpe` (proposed).
    pub method: String,
}

/// Short column names for config paths: the last segment, or more where two collide.
pub fn column_names(paths: &[String]) -> Vec<String> {
    // `optimizer.name = adam` reads best as `optimizer = adam`.
    let short = |q: &str| -> String {
        let mut parts = q.rsplit('.');
        let last = parts.next().unwrap_or(q);
        match (last, parts.next()) {
            ("name", Some(parent)) => parent.to_owned(),
            _ => last.to_owned(),
        }
    };
    paths
        .iter()
        .map(|p| {
            let mine = short(p);
            let clash = paths.iter().filter(|q| short(q) == mine).count() > 1;
            if clash {
                p.clone()
            } else {
                mine
            }
        })
        .collect()
}

impl Comparison {
    /// Loads the runs of the named sweeps (none: every run once), with their
    /// epochs when `with_epochs` (a report; `results` needs only the summary).
    pub async fn load(store: &Store, sweeps: &[String], with_epochs: bool) -> Result<Comparison, StoreError> {
        // The configurations are flattened on a second thread while SQLite is
        // still reading (half of the time of `results` on 10,000 runs was
        // one, half the other), in chunks of runs.
        const CHUNK: usize = 1024;
        let (tx, rx) = std::sync::mpsc::channel::<Vec<RunRow>>();
        let flattener = std::thread::spawn(move || {
            let mut interner = params::Interner::default();
            let mut out: Vec<(RunRow, Params)> = Vec::new();
            for chunk in rx {
                let flat = interner.flatten_all(chunk.iter().map(|r| r.config_json.as_str()));
                out.extend(chunk.into_iter().zip(flat));
            }
            out
        });
        let mut chunk = Vec::with_capacity(CHUNK);
        let mut add = |r: RunRow| {
            chunk.push(r);
            if chunk.len() == CHUNK {
                // The receiver only goes away by panicking, which join reports below.
                let _ = tx.send(std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK)));
            }
        };
        if sweeps.is_empty() {
            store.each_run(None, &mut add).await?;
        } else {
            for name in sweeps {
                store.each_run(Some(name), &mut add).await?;
            }
        }
        let _ = tx.send(chunk);
        drop(tx);
        let rows = flattener.join().expect("flattening configurations does not panic");
        let mut all = store.sweeps().await?;
        if sweeps.is_empty() {
            all.retain(|s| rows.iter().any(|(r, _)| r.sweep == s.name));
        } else {
            all.retain(|s| sweeps.contains(&s.name));
        }
        let trials = if with_epochs { store.trials_by_run().await? } else { std::collections::HashMap::new() };
        let mut runs = Vec::with_capacity(rows.len());
        for (row, params) in rows {
            // The parsed configuration is kept for reports only (their JSON shows it).
            let (config, epochs, trial) = if with_epochs {
                let trial =
                    trials.get(&row.id).cloned().map(|(search, number, method)| Trial { search, number, method });
                (serde_json::from_str(&row.config_json).unwrap_or(Value::Null), store.epochs(row.id).await?, trial)
            } else {
                (Value::Null, Vec::new(), None)
            };
            runs.push(RunReport { params, config, epochs, row, best: false, trial });
        }
        let sampled_scales = if with_epochs {
            let searched = store.search_sweeps().await?;
            let shown = searched.iter().filter(|s| all.iter().any(|a| a.id == s.id));
            crate::spec::agreed_scales(shown.flat_map(|s| crate::spec::sampled_scales(&s.source_toml)))
        } else {
            std::collections::BTreeMap::new()
        };
        let mut cmp = Comparison { sweeps: all, runs, differing: Vec::new(), best_confusion: None, sampled_scales };
        cmp.refresh();
        if with_epochs {
            if let Some(best) = cmp.runs.iter().find(|r| r.best) {
                cmp.best_confusion = store.best_confusion(best.row.id).await?;
            }
        }
        Ok(cmp)
    }

    /// Recomputes the differing parameters and the best run (after filtering).
    pub fn refresh(&mut self) {
        let flat: Vec<&Params> = self.runs.iter().map(|r| &r.params).collect();
        self.differing = differing(&flat);
        for r in &mut self.runs {
            r.best = false;
        }
        self.mark_best();
    }

    /// Marks the run with the best metric (over runs that have one) as best.
    fn mark_best(&mut self) {
        let maximize = |r: &RunReport| matches!(r.row.metric.as_str(), "test_acc" | "train_acc" | "val_acc");
        let mut best: Option<(usize, f64)> = None;
        for (i, r) in self.runs.iter().enumerate() {
            let Some(v) = r.row.best_metric else { continue };
            let better = match best {
                None => true,
                Some((_, b)) => {
                    if maximize(r) {
                        v > b
                    } else {
                        v < b
                    }
                }
            };
            if better {
                best = Some((i, v));
            }
        }
        if let Some((i, _)) = best {
            self.runs[i].best = true;
        }
    }

    /// Count of runs per status.
    pub fn status_counts(&self) -> Vec<(Status, usize)> {
        Status::ALL
            .iter()
            .map(|s| (*s, self.runs.iter().filter(|r| r.row.status == *s).count()))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

/// What every run of a report shares, as (setting, value) lines: the
/// dataset with its class count, the model and its set-up, epochs, batch
/// size, optimizer, schedule and augmentation (each with the fields every
/// run has alike), the devices, and which sweep made the report, when.
pub fn shared_settings(c: &Comparison) -> Vec<(String, String)> {
    const ORDER: [&str; 14] = [
        "dataset",
        "model",
        "pretrained",
        "freeze",
        "stem",
        "head",
        "epochs",
        "batch_size",
        "optimizer",
        "schedule",
        "warmup",
        "augment",
        "val_split",
        "precision",
    ];
    let params: Vec<&Params> = c.runs.iter().map(|r| &r.params).collect();
    let mut out = Vec::new();
    if params.is_empty() {
        return out;
    }
    let keys = params::all_keys(&params);
    let differs: std::collections::HashSet<&str> = c.differing.iter().map(String::as_str).collect();
    let same = |path: &str| -> Option<String> {
        let first = params[0].get(path)?;
        (!differs.contains(path) && params.iter().all(|p| p.get(path) == Some(first))).then(|| first.to_owned())
    };
    let mut tops: Vec<&str> = keys.iter().map(|k| k.split('.').next().unwrap_or(k)).collect();
    tops.dedup();
    let rank = |t: &str| ORDER.iter().position(|o| *o == t).unwrap_or(ORDER.len());
    tops.sort_by_key(|t| (rank(t), *t));
    tops.dedup();
    for top in tops {
        if matches!(top, "metric" | "seed" | "keep") {
            continue;
        }
        let mut parts = Vec::new();
        if let Some(v) = same(top) {
            parts.push(v);
        }
        let prefix = format!("{top}.");
        for k in keys.iter().filter(|k| k.starts_with(&prefix)) {
            if let Some(v) = same(k) {
                let field = &k[prefix.len()..];
                if field == "name" {
                    parts.insert(0, v);
                } else {
                    parts.push(format!("{field} {v}"));
                }
            }
        }
        if parts.is_empty() {
            continue;
        }
        let mut value = parts.join(", ");
        if top == "dataset" {
            let classes: Vec<usize> = c.runs.iter().filter_map(|r| r.row.classes.as_ref().map(Vec::len)).collect();
            if let Some(&n) = classes.first() {
                if classes.iter().all(|&x| x == n) {
                    value = format!("{value}; {n} classes");
                }
            }
        }
        out.push((top.to_owned(), value));
    }
    let mut devices: Vec<&str> = c.runs.iter().filter_map(|r| r.row.device.as_deref()).collect();
    devices.sort_unstable();
    devices.dedup();
    if !devices.is_empty() {
        out.push(("device".into(), devices.join("; ")));
    }
    let today = crate::clock::utc_timestamp(std::time::SystemTime::now());
    out.push(("report".into(), format!("sweep {} on {}", env!("CARGO_PKG_VERSION"), &today[..10])));
    out
}
