//! Checkpoint files: weights and trainer state, written atomically, verified on load.
//!
//! A checkpoint is two safetensors files in the run's folder:
//! * `eEEEE-sSSSSS.safetensors`: every parameter and BatchNorm buffer under its
//!   torchvision name, nothing else, so PyTorch can `load_state_dict` it;
//! * `eEEEE-sSSSSS.state.safetensors`: the optimiser's buffers and a JSON
//!   [`TrainerState`] (stored as a u8 tensor named `__sweep_state__`).
//!
//! `EEEE` counts finished epochs and `SSSSS` batches of the next one (non-zero
//! only when a run is stopped mid-epoch). Files are never overwritten: each is
//! written to a temporary name, synced and renamed, and its SHA-256 goes into the
//! database in the same transaction as the epoch it belongs to. The worker
//! deletes files that no database row refers to, so a crash between writing and
//! recording leaves only an orphan that is cleaned up, never a mismatch.

mod file;

use super::optim::Optimizer;
use super::TrainError;
use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

const STATE_KEY: &str = "__sweep_state__";

/// Where training stands at a checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Finished epochs.
    pub epoch: u64,
    /// Batches done in the next epoch.
    pub step: u64,
    /// Optimiser steps taken.
    pub optimizer_steps: u64,
    /// Best metric value so far.
    pub best_metric: Option<f64>,
    /// Epoch (1-based) of the best metric.
    pub best_epoch: Option<u64>,
    /// Running sums of the unfinished epoch (mid-epoch checkpoints only).
    pub partial: Partial,
    /// Early stopping: the best value of its metric so far.
    #[serde(default)]
    pub stop_best: Option<f64>,
    /// Early stopping: epochs since that value improved.
    #[serde(default)]
    pub since_improved: u64,
    /// Early stopping has ended the run after epoch `epoch`.
    #[serde(default)]
    pub stopped_early: bool,
}

/// Running sums over the batches of an unfinished epoch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Partial {
    /// Sum of batch loss x batch size.
    pub loss_sum: f64,
    /// Correct top-1 predictions.
    pub correct: u64,
    /// Images seen.
    pub seen: u64,
    /// Seconds spent in this epoch so far.
    pub seconds: f64,
}

/// The two files of a saved checkpoint, relative to the home folder, with checksums.
#[derive(Debug, Clone, PartialEq)]
pub struct Saved {
    /// Weights file.
    pub path: String,
    /// Its SHA-256.
    pub sha256: String,
    /// Trainer-state file.
    pub state_path: String,
    /// Its SHA-256.
    pub state_sha256: String,
}

/// Whether an I/O error is a full disk (or an exhausted quota).
pub fn is_disk_full(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::StorageFull || matches!(e.raw_os_error(), Some(28 | 122))
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |e| {
        if is_disk_full(&e) {
            TrainError::DiskFull { path: path.to_owned() }
        } else {
            TrainError::Checkpoint { path: path.to_owned(), detail: e.to_string() }
        }
    }
}

/// SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String, TrainError> {
    crate::fetch::sha256_file(path).map_err(io_err(path))
}

/// Saves weights and state into `home/rel_dir`.
pub fn save(
    home: &Path,
    rel_dir: &str,
    varmap: &VarMap,
    opt: &Optimizer,
    state: &TrainerState,
) -> Result<Saved, TrainError> {
    let dir = home.join(rel_dir);
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let stem = format!("e{:04}-s{:05}", state.epoch, state.step);
    let weights: Vec<(String, Tensor)> =
        varmap.data().lock().expect("varmap lock").iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect();
    let mut st: Vec<(String, Tensor)> = opt.state().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let json = serde_json::to_vec(state).expect("TrainerState serialises");
    let n = json.len();
    st.push((STATE_KEY.to_owned(), Tensor::from_vec(json, n, &Device::Cpu).map_err(TrainError::Candle)?));
    let wpath = dir.join(format!("{stem}.safetensors"));
    let spath = dir.join(format!("{stem}.state.safetensors"));
    // The two files at once (each written by one thread and hashed by another).
    let (sha256, state_sha256) = std::thread::scope(|s| {
        let weights = s.spawn(|| file::write(weights, &wpath));
        let state = file::write(st, &spath);
        (weights.join().expect("writing does not panic"), state)
    });
    Ok(Saved {
        path: format!("{rel_dir}/{stem}.safetensors"),
        sha256: sha256?,
        state_path: format!("{rel_dir}/{stem}.state.safetensors"),
        state_sha256: state_sha256?,
    })
}

fn verified(home: &Path, rel: &str, sha: &str) -> Result<PathBuf, TrainError> {
    let path = home.join(rel);
    if !path.exists() {
        return Err(TrainError::Checkpoint { path, detail: "the checkpoint file is missing".into() });
    }
    let actual = sha256_file(&path)?;
    if actual != sha {
        return Err(TrainError::Checkpoint {
            path,
            detail: format!("checksum mismatch (recorded {sha}, file has {actual}): the file is corrupt"),
        });
    }
    Ok(path)
}

/// Loads a checkpoint into the model's variables and the optimiser, after
/// verifying both checksums; returns the trainer state.
pub fn load(
    home: &Path,
    files: &Saved,
    varmap: &VarMap,
    opt: &mut Optimizer,
    device: &Device,
) -> Result<TrainerState, TrainError> {
    let wpath = verified(home, &files.path, &files.sha256)?;
    let spath = verified(home, &files.state_path, &files.state_sha256)?;
    let bad = |path: &Path, detail: String| TrainError::Checkpoint { path: path.to_owned(), detail };
    let weights = candle_core::safetensors::load(&wpath, device).map_err(|e| bad(&wpath, e.to_string()))?;
    {
        let data = varmap.data().lock().expect("varmap lock");
        for (name, var) in data.iter() {
            let t = weights.get(name).ok_or_else(|| bad(&wpath, format!("no tensor named `{name}`")))?;
            var.set(&t.to_dtype(var.dtype()).map_err(TrainError::Candle)?)
                .map_err(|e| bad(&wpath, format!("`{name}`: {e}")))?;
        }
    }
    let mut st = candle_core::safetensors::load(&spath, device).map_err(|e| bad(&spath, e.to_string()))?;
    let json = st
        .remove(STATE_KEY)
        .ok_or_else(|| bad(&spath, format!("no `{STATE_KEY}` entry")))?
        .to_device(&Device::Cpu)
        .and_then(|t| t.to_vec1::<u8>())
        .map_err(|e| bad(&spath, e.to_string()))?;
    let state: TrainerState = serde_json::from_slice(&json).map_err(|e| bad(&spath, format!("trainer state: {e}")))?;
    opt.load_state(st, state.optimizer_steps);
    Ok(state)
}

/// The names of the files in `dir` (none when it does not exist).
///
/// # Errors
/// The folder could not be read.
pub fn list_files(dir: &Path) -> std::io::Result<Vec<String>> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(Vec::new()) };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// Removes the files `names` of `dir` (what the worker's retention decided).
///
/// # Errors
/// A file could not be removed.
pub fn remove_files(dir: &Path, names: &[String]) -> std::io::Result<()> {
    for name in names {
        match std::fs::remove_file(dir.join(name)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes `text` to `path` atomically (used for the run's config.json).
pub fn write_text_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(text.as_bytes())?;
        f.sync_all()
    });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run resumed mid-epoch must end with the same train loss, to the bit, as
    /// one that never stopped: the running sums read back exactly as written
    /// (serde_json's default float parser can be one ulp off; `float_roundtrip`).
    #[test]
    fn trainer_state_round_trips_every_float_exactly() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for i in 0..20_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Sums of batch loss x batch size: a few units to a few thousand.
            let loss_sum = (x >> 11) as f64 / (1u64 << 53) as f64 * 10f64.powi((i % 5) as i32);
            let state = TrainerState {
                partial: Partial { loss_sum, correct: i, seen: i + 1, seconds: loss_sum / 3.0 },
                best_metric: Some(loss_sum / 7.0),
                ..TrainerState::default()
            };
            let json = serde_json::to_vec(&state).unwrap();
            let back: TrainerState = serde_json::from_slice(&json).unwrap();
            assert_eq!(back.partial.loss_sum.to_bits(), loss_sum.to_bits(), "{}", String::from_utf8_lossy(&json));
            assert_eq!(back, state);
        }
    }
}
