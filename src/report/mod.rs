//! Results and reports: read models from the store turned into text.
//!
//! Nothing here touches candle or writes to the database. [`Comparison`] gathers
//! the runs to show (with their epochs for a report); [`query`] filters, sorts
//! and groups them into a results table; the renderers write it out
//! ([`render`]: terminal table, CSV, JSON, Markdown; [`html`]: the
//! self-contained HTML report with the [`charts`] drawn by [`svg`]). By default
//! only the parameters that differ between the runs shown are listed (a
//! diff-only view), named by their last path segment.

pub mod charts;
pub mod html;
pub mod query;
pub mod render;
pub mod svg;
pub use render::text_table;

pub use html::html;
pub use render::{csv_epochs, json, markdown, render_table, results, results_json, ResultsFormat};

use crate::store::{EpochRecord, RunRow, Status, Store, StoreError, SweepRow};
use serde_json::Value;
use std::borrow::Borrow;
use std::collections::BTreeMap;

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
}

/// One run in a report.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// The run and its summary numbers.
    pub row: RunRow,
    /// Its configuration, flattened to `path -> value text`.
    pub params: BTreeMap<String, String>,
    /// Its configuration as JSON (`Null` when loaded without epochs, for `results`).
    pub config: Value,
    /// Its epochs, in order.
    pub epochs: Vec<EpochRecord>,
    /// Whether it has the best metric among the runs shown.
    pub best: bool,
}

/// Flattens a JSON config into dotted paths; lists of transforms are summarised
/// by the augmentation set's name, so they are left out.
pub fn flatten(value: &Value) -> BTreeMap<String, String> {
    fn walk(prefix: &str, v: &Value, out: &mut BTreeMap<String, String>) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    if k == "train_transforms" || k == "test_transforms" {
                        continue;
                    }
                    let p = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    walk(&p, v, out);
                }
            }
            Value::String(s) => {
                out.insert(prefix.to_owned(), s.clone());
            }
            other => {
                out.insert(prefix.to_owned(), other.to_string());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk("", value, &mut out);
    out
}

/// [`flatten`] straight from JSON text, without building a `Value` tree first
/// (half the cost of `sweep results` on 10,000 runs went into that tree).
pub fn flatten_json(text: &str) -> Result<BTreeMap<String, String>, serde_json::Error> {
    use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
    struct Walk<'a> {
        prefix: String,
        out: &'a mut BTreeMap<String, String>,
    }
    impl<'de> DeserializeSeed<'de> for Walk<'_> {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }
    impl<'de> Visitor<'de> for Walk<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON value")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while let Some(k) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                if k == "train_transforms" || k == "test_transforms" {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
                let prefix = if self.prefix.is_empty() { k.into_owned() } else { format!("{}.{k}", self.prefix) };
                map.next_value_seed(Walk { prefix, out: &mut *self.out })?;
            }
            Ok(())
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
            let v = <Value as serde::Deserialize>::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))?;
            self.out.insert(self.prefix, v.to_string());
            Ok(())
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
            self.out.insert(self.prefix, v.to_owned());
            Ok(())
        }
        fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<(), E> {
            self.visit_str(v)
        }
        fn visit_string<E: serde::de::Error>(self, v: String) -> Result<(), E> {
            self.out.insert(self.prefix, v);
            Ok(())
        }
        fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<(), E> {
            self.out.insert(self.prefix, v.to_string());
            Ok(())
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<(), E> {
            self.out.insert(self.prefix, Value::from(v).to_string());
            Ok(())
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<(), E> {
            self.out.insert(self.prefix, Value::from(v).to_string());
            Ok(())
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
            self.out.insert(self.prefix, Value::from(v).to_string());
            Ok(())
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
            self.out.insert(self.prefix, "null".into());
            Ok(())
        }
    }
    let mut out = BTreeMap::new();
    let mut de = serde_json::Deserializer::from_str(text);
    Walk { prefix: String::new(), out: &mut out }.deserialize(&mut de)?;
    de.end()?;
    Ok(out)
}

/// Config paths whose values are not the same in every run, leaving out the
/// fields of a table that only follow its `name` (with an SGD and an Adam run,
/// `optimizer.betas` or `optimizer.momentum` say nothing `optimizer` does not).
pub fn differing<M: std::borrow::Borrow<BTreeMap<String, String>>>(runs: &[M]) -> Vec<String> {
    let runs: Vec<&BTreeMap<String, String>> = runs.iter().map(Borrow::borrow).collect();
    let keys = all_keys(&runs);
    let differs = |k: &str| {
        let first = runs.first().and_then(|r| r.get(k));
        runs.iter().any(|r| r.get(k) != first)
    };
    let follows_name = |k: &str| {
        let Some((table, field)) = k.rsplit_once('.') else { return false };
        let name = format!("{table}.name");
        if field == "name" || !keys.contains(name.as_str()) || !differs(&name) {
            return false;
        }
        let mut seen: BTreeMap<Option<&String>, Option<&String>> = BTreeMap::new();
        runs.iter().all(|r| *seen.entry(r.get(&name)).or_insert(r.get(k)) == r.get(k))
    };
    keys.iter().filter(|k| differs(k) && !follows_name(k)).map(|k| (*k).to_owned()).collect()
}

/// Every config path of `runs`, sorted. Runs of one sweep mostly share their
/// paths, so a run whose paths equal the previous run's is skipped cheaply.
pub fn all_keys<'a>(runs: &[&'a BTreeMap<String, String>]) -> std::collections::BTreeSet<&'a str> {
    let mut keys = std::collections::BTreeSet::new();
    let mut last: Option<&BTreeMap<String, String>> = None;
    for r in runs {
        if last.is_some_and(|l| l.len() == r.len() && l.keys().eq(r.keys())) {
            continue;
        }
        keys.extend(r.keys().map(String::as_str));
        last = Some(r);
    }
    keys
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
        let mut rows = Vec::new();
        if sweeps.is_empty() {
            rows = store.runs(None).await?;
        } else {
            for name in sweeps {
                rows.extend(store.runs(Some(name)).await?);
            }
        }
        let mut all = store.sweeps().await?;
        if sweeps.is_empty() {
            all.retain(|s| rows.iter().any(|r| r.sweep == s.name));
        } else {
            all.retain(|s| sweeps.contains(&s.name));
        }
        let mut runs = Vec::with_capacity(rows.len());
        for row in rows {
            let params = flatten_json(&row.config_json).unwrap_or_default();
            // The parsed configuration is kept for reports only (their JSON shows it).
            let (config, epochs) = if with_epochs {
                (serde_json::from_str(&row.config_json).unwrap_or(Value::Null), store.epochs(row.id).await?)
            } else {
                (Value::Null, Vec::new())
            };
            runs.push(RunReport { params, config, epochs, row, best: false });
        }
        let mut cmp = Comparison { sweeps: all, runs, differing: Vec::new(), best_confusion: None };
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
        let flat: Vec<&BTreeMap<String, String>> = self.runs.iter().map(|r| &r.params).collect();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn run(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn flatten_json_equals_flatten_of_the_value() {
        let text = r#"{"model":"resnet18","optimizer":{"name":"adam","lr":0.001,"betas":[0.9,0.999],"eps":1e-8,
            "amsgrad":false},"seed":3,"big":18446744073709551615,"neg":-2,"x":null,"train_transforms":[{"hflip":{}}],
            "dataset":{"name":"synthetic","train_size":100}}"#;
        let v: Value = serde_json::from_str(text).unwrap();
        assert_eq!(flatten_json(text).unwrap(), flatten(&v));
        assert_eq!(flatten_json(text).unwrap()["optimizer.eps"], "1e-8");
        assert!(flatten_json("{\"a\": 1} x").is_err());
    }

    #[test]
    fn fields_that_follow_a_differing_name_are_left_out() {
        let runs = [
            run(&[("model", "a"), ("optimizer.name", "sgd"), ("optimizer.lr", "0.1"), ("optimizer.momentum", "0.9")]),
            run(&[("model", "a"), ("optimizer.name", "sgd"), ("optimizer.lr", "0.2"), ("optimizer.momentum", "0.9")]),
            run(&[("model", "a"), ("optimizer.name", "adam"), ("optimizer.lr", "0.001"), ("optimizer.betas", "[0.9]")]),
        ];
        assert_eq!(differing(&runs), vec!["optimizer.lr", "optimizer.name"]);
        // Momentum that varies within SGD runs is kept.
        let mut more = runs.to_vec();
        more[1].insert("optimizer.momentum".into(), "0.5".into());
        assert_eq!(differing(&more), vec!["optimizer.lr", "optimizer.momentum", "optimizer.name"]);
    }
}
