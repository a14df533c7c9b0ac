//! An MLflow file store (the layout of `mlflow.store.tracking.file_store`):
//!
//! ```text
//! DIR/0/meta.yaml                          the Default experiment MLflow expects
//! DIR/<sweep id>/meta.yaml                 one experiment per sweep, named after it
//! DIR/<sweep id>/<run id>/meta.yaml        run info: name, status, start and end times
//! DIR/<sweep id>/<run id>/params/<path>    each configuration value (e.g. optimizer.lr)
//! DIR/<sweep id>/<run id>/metrics/<name>   "<ms> <value> <epoch>" per line
//! DIR/<sweep id>/<run id>/tags/<key>       mlflow.runName, sweep.key, sweep.status, ...
//! DIR/<sweep id>/<run id>/artifacts/       best.safetensors (the best checkpoint), config.json
//! ```
//! Run ids are the first 32 hex digits of the run key, so exporting again
//! rewrites the same runs. `MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri DIR` opens it.

use super::{epoch_metrics, io, start_time, Facts, Result, RunFacts, Written};
use crate::report::{Comparison, RunReport};
use crate::store::Status;
use std::path::Path;

/// A YAML double-quoted scalar (JSON string escapes are valid YAML ones).
fn quoted(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

fn write(path: &Path, text: &str, written: &mut Written) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    std::fs::write(path, text).map_err(io(path))?;
    written.files += 1;
    Ok(())
}

fn experiment_meta(dir: &Path, id: &str, name: &str, millis: i64) -> String {
    let location = format!("file://{}", dir.join(id).display());
    format!(
        "artifact_location: {}\ncreation_time: {millis}\nexperiment_id: '{id}'\nlast_update_time: {millis}\n\
         lifecycle_stage: active\nname: {}\n",
        quoted(&location),
        quoted(name)
    )
}

/// `mlflow.entities.RunStatus` of a run.
fn run_status(s: Status) -> u8 {
    match s {
        Status::Running => 1,
        Status::Queued => 2,
        Status::Done => 3,
        Status::Failed | Status::Diverged => 4,
        Status::Interrupted | Status::Cancelled => 5,
    }
}

/// A param or tag key MLflow accepts (letters, digits, `_ - . / space :`).
fn key_name(k: &str) -> String {
    k.chars().map(|c| if c.is_ascii_alphanumeric() || "_-./ :".contains(c) { c } else { '_' }).collect()
}

fn export_run(r: &RunReport, exp_dir: &Path, exp_id: &str, facts: &RunFacts, written: &mut Written) -> Result<()> {
    let times = &facts.times;
    let run_id = &r.row.key[..32];
    let run_dir = exp_dir.join(run_id);
    let ms = |t: f64| (t * 1000.0).round() as i64;
    let start = start_time(r, facts);
    let end = match r.row.status {
        Status::Running | Status::Queued => "null".to_owned(),
        _ => ms(times.last().copied().unwrap_or(start)).to_string(),
    };
    let artifacts = run_dir.join("artifacts");
    let meta = format!(
        "artifact_uri: {}\ndeleted_time: null\nend_time: {end}\nentry_point_name: ''\nexperiment_id: '{exp_id}'\n\
         lifecycle_stage: active\nrun_id: {run_id}\nrun_name: {}\nrun_uuid: {run_id}\nsource_name: ''\n\
         source_type: 4\nsource_version: ''\nstart_time: {}\nstatus: {}\ntags: []\nuser_id: sweep\n",
        quoted(&format!("file://{}", artifacts.display())),
        quoted(&r.row.name),
        ms(start),
        run_status(r.row.status)
    );
    // A run exported before is replaced whole (its params may have changed names).
    match std::fs::remove_dir_all(&run_dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&run_dir)(e)),
    }
    write(&run_dir.join("meta.yaml"), &meta, written)?;
    for (k, v) in r.params.iter() {
        write(&run_dir.join("params").join(key_name(k)), v, written)?;
    }
    let mut metrics: Vec<(&'static str, String)> = Vec::new();
    for (i, e) in r.epochs.iter().enumerate() {
        let t = ms(times.get(i).copied().unwrap_or(start));
        for (name, v) in epoch_metrics(e) {
            let line = format!("{t} {v} {}\n", e.epoch);
            match metrics.iter_mut().find(|(n, _)| *n == name) {
                Some((_, text)) => text.push_str(&line),
                None => metrics.push((name, line)),
            }
        }
    }
    for (name, text) in &metrics {
        write(&run_dir.join("metrics").join(name), text, written)?;
    }
    let mut tags = vec![
        ("mlflow.runName", r.row.name.clone()),
        ("mlflow.user", "sweep".to_owned()),
        ("mlflow.source.name", "sweep".to_owned()),
        ("sweep.sweep", r.row.sweep.clone()),
        ("sweep.key", r.row.key.clone()),
        ("sweep.status", r.row.status.to_string()),
        ("sweep.attempts", r.row.attempts.to_string()),
    ];
    if let Some(d) = &r.row.device {
        tags.push(("sweep.device", d.clone()));
    }
    if let Some(b) = r.row.best_epoch {
        tags.push(("sweep.best_epoch", b.to_string()));
    }
    if let Some(e) = &r.row.error {
        tags.push(("sweep.error", e.clone()));
    }
    if let Some(n) = &r.row.note {
        tags.push(("mlflow.note.content", n.clone()));
    }
    for (k, v) in &tags {
        write(&run_dir.join("tags").join(k), v, written)?;
    }
    std::fs::create_dir_all(&artifacts).map_err(io(&artifacts))?;
    if let Some(from) = &facts.best_checkpoint {
        let to = artifacts.join("best.safetensors");
        // A hard link where the export is on the same disk; a copy otherwise.
        if std::fs::hard_link(from, &to).is_err() {
            std::fs::copy(from, &to).map_err(io(from))?;
        }
        written.files += 1;
    }
    if let Some(config) = &facts.config_file {
        std::fs::copy(config, artifacts.join("config.json")).map_err(io(config))?;
        written.files += 1;
    }
    Ok(())
}

/// Writes the sweeps and their runs with epochs as an MLflow file store in `dir`.
pub fn export(cmp: &Comparison, facts: &Facts, dir: &Path) -> Result<Written> {
    let mut written = Written::default();
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let dir = &std::path::absolute(dir).map_err(io(dir))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    if !dir.join("0").join("meta.yaml").exists() {
        write(&dir.join("0").join("meta.yaml"), &experiment_meta(dir, "0", "Default", now), &mut written)?;
    }
    for s in &cmp.sweeps {
        let runs: Vec<&RunReport> = super::exportable(cmp).filter(|r| r.row.sweep == s.name).collect();
        if runs.is_empty() {
            continue;
        }
        let id = s.id.to_string();
        let exp_dir = dir.join(&id);
        write(&exp_dir.join("meta.yaml"), &experiment_meta(dir, &id, &s.name, now), &mut written)?;
        if let Some(d) = &s.description {
            write(&exp_dir.join("tags").join("mlflow.note.content"), d, &mut written)?;
        }
        for r in runs {
            let f = facts.get(&r.row.id).cloned().unwrap_or_default();
            export_run(r, &exp_dir, &id, &f, &mut written)?;
            written.runs += 1;
            written.epochs += r.epochs.len();
        }
    }
    Ok(written)
}
