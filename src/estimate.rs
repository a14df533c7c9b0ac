//! How long runs will take, before or while they train: from the measured
//! pace of earlier runs like them (the database's history), else from a
//! timed probe ([`crate::train::probe`]). Pure: the callers gather the
//! history and run the probes.

use crate::spec::RunConfig;

/// What an earlier run measured: its configuration and seconds per epoch.
#[derive(Debug, Clone)]
pub struct Sample {
    /// The run's configuration.
    pub config: RunConfig,
    /// Seconds per finished epoch (training, testing and checkpoint).
    pub seconds_per_epoch: f64,
    /// The most memory it used, in bytes, where recorded
    /// ([`crate::train::device::PeakMemory`]).
    pub peak_memory: Option<u64>,
}

/// Where an estimate comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    /// Earlier runs of the same model, data, input and batch size.
    SameRuns,
    /// Earlier runs of the same model, data and input, at another batch size.
    SameModel,
    /// A timed probe of the model here.
    Probe,
}

impl Basis {
    /// A few words for a person.
    pub fn describe(self) -> &'static str {
        match self {
            Basis::SameRuns => "earlier runs like it",
            Basis::SameModel => "earlier runs of the model at another batch size",
            Basis::Probe => "a timed probe",
        }
    }
}

/// What changes a run's pace, from most to least telling: the model and
/// what it sees, then the batch size and the rest of the set-up.
fn model_key(c: &RunConfig) -> String {
    serde_json::json!([c.model, c.head, c.stem, c.dataset, c.train_transforms, c.test_transforms, c.precision])
        .to_string()
}

/// What a run's pace depends on, as one string: runs with equal keys train
/// at the same speed (the key `plan` caches its probes under, too).
pub fn pace_key(c: &RunConfig) -> String {
    serde_json::json!([model_key(c), c.batch_size, c.freeze, c.freeze_bn, c.val_split]).to_string()
}

/// Seconds per epoch of `config` from the history: the mean of the runs
/// like it, else of the runs of its model and data at other batch sizes.
pub fn per_epoch_from_history(history: &[Sample], config: &RunConfig) -> Option<(f64, Basis)> {
    let mean = |v: Vec<f64>| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    let key = pace_key(config);
    let same: Vec<f64> = history.iter().filter(|s| pace_key(&s.config) == key).map(|s| s.seconds_per_epoch).collect();
    if let Some(m) = mean(same) {
        return Some((m, Basis::SameRuns));
    }
    let mk = model_key(config);
    let close: Vec<f64> = history.iter().filter(|s| model_key(&s.config) == mk).map(|s| s.seconds_per_epoch).collect();
    mean(close).map(|m| (m, Basis::SameModel))
}

/// The most memory an earlier run like `config` (the same model, data and
/// batch size) took, from the history; None where none recorded it.
pub fn memory_from_history(history: &[Sample], config: &RunConfig) -> Option<u64> {
    let key = pace_key(config);
    history.iter().filter(|s| pace_key(&s.config) == key).filter_map(|s| s.peak_memory).max()
}

/// The history in the database's rows: every run with a finished epoch that
/// trained on the hardware of `device`, a device's description as runs
/// record it (`cpu (MODEL, 2 threads)`, `cuda:0 (NVIDIA H200, ...), cudnn
/// kernels`; see [`same_hardware`]). A pace measured elsewhere says nothing
/// of this device's: the term report's ResNet18 takes days on two CPU cores
/// and minutes on a GPU, and a store shared by many machines holds both.
pub fn history(rows: &[crate::store::RunRow], device: &str) -> Vec<Sample> {
    timed(rows, device, true)
        .filter_map(|r| {
            let config = serde_json::from_str(&r.config_json).ok()?;
            Some(Sample {
                config,
                seconds_per_epoch: r.train_seconds / r.epochs_done as f64,
                peak_memory: r.peak_memory_bytes.and_then(|b| u64::try_from(b).ok()),
            })
        })
        .collect()
}

/// How many runs in `rows` finished an epoch on other hardware than
/// `device` (left out of [`history`]), for saying why an estimate was timed.
pub fn elsewhere(rows: &[crate::store::RunRow], device: &str) -> usize {
    timed(rows, device, false).count()
}

/// Each run of `rows` (once) with a finished epoch and a recorded device
/// that is (`same`) or is not the hardware of `device`.
fn timed<'a>(
    rows: &'a [crate::store::RunRow],
    device: &'a str,
    same: bool,
) -> impl Iterator<Item = &'a crate::store::RunRow> + 'a {
    let mut seen = std::collections::HashSet::new();
    rows.iter()
        .filter(move |r| r.epochs_done > 0 && r.train_seconds > 0.0 && seen.insert(r.id))
        .filter(move |r| r.device.as_deref().is_some_and(|d| same_hardware(d, device) == same))
}

/// Whether two device descriptions name the same hardware: equal but for
/// which GPU of a machine (`cuda:0 (NVIDIA H200, ...)` is `cuda:1 (NVIDIA
/// H200, ...)`). The rest counts: the CPU's model and threads, the GPU's
/// model, memory and driver, and its kernel set (candle's generic kernels
/// train 16-19x slower than the cuDNN set).
pub fn same_hardware(a: &str, b: &str) -> bool {
    fn hardware(d: &str) -> &str {
        match d.strip_prefix("cuda:") {
            Some(rest) => rest.trim_start_matches(|c: char| c.is_ascii_digit()),
            None => d,
        }
    }
    a.starts_with("cuda:") == b.starts_with("cuda:") && hardware(a) == hardware(b)
}

/// Seconds per epoch from a probe's pace and the split sizes.
pub fn per_epoch_from_pace(pace: crate::train::probe::Pace, train_images: usize, test_images: usize) -> f64 {
    pace.train * train_images as f64 + pace.test * test_images as f64
}

/// `secs` for a person, with days when it comes to that: `45s`, `12m`, `3h20m`, `2d 4h`.
pub fn human(secs: f64) -> String {
    let s = secs.max(0.0);
    if s < 60.0 {
        format!("{s:.0}s")
    } else if s < 3600.0 {
        format!("{:.0}m", s / 60.0)
    } else if s < 86_400.0 {
        format!("{}h{:02}m", (s / 3600.0) as u64, ((s % 3600.0) / 60.0) as u64)
    } else {
        format!("{}d {}h", (s / 86_400.0) as u64, ((s % 86_400.0) / 3600.0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::parse;
    use std::path::Path;

    fn configs() -> Vec<RunConfig> {
        let text = "name = \"e\"\n[dataset]\nname = \"synthetic\"\n[defaults]\nmodel = \"smallcnn\"\nepochs = 2\n\
                    augment = \"none\"\noptimizer = { name = \"sgd\", lr = 0.1 }\n[[grid]]\nbatch_size = [16, 32]\n\
                    [[run]]\nname = \"r18\"\nmodel = \"resnet18\"\nbatch_size = 16\n";
        parse(Path::new("e.toml"), text).expect("parses").runs.into_iter().map(|r| r.config).collect()
    }

    #[test]
    fn the_closest_history_wins() {
        let c = configs();
        let (b16, b32, r18) = (&c[0], &c[1], &c[2]);
        let history = vec![
            Sample { config: b16.clone(), seconds_per_epoch: 10.0, peak_memory: Some(300) },
            Sample { config: b16.clone(), seconds_per_epoch: 12.0, peak_memory: Some(400) },
            Sample { config: b16.clone(), seconds_per_epoch: 11.0, peak_memory: None },
        ];
        // The most memory of the runs like it; none at another batch size.
        assert_eq!(memory_from_history(&history, b16), Some(400));
        assert_eq!(memory_from_history(&history, b32), None);
        assert_eq!(per_epoch_from_history(&history, b16), Some((11.0, Basis::SameRuns)));
        assert_eq!(per_epoch_from_history(&history, b32), Some((11.0, Basis::SameModel)));
        assert_eq!(per_epoch_from_history(&history, r18), None);
        // The learning rate does not change the pace.
        let mut other_lr = b16.clone();
        if let crate::spec::OptimizerSpec::Sgd { lr, .. } = &mut other_lr.optimizer {
            *lr = 0.5;
        }
        assert_eq!(per_epoch_from_history(&history, &other_lr).map(|e| e.1), Some(Basis::SameRuns));
    }

    #[test]
    fn history_from_other_hardware_is_left_out() {
        let h200 = "cuda:0 (NVIDIA H200, CUDA 13.0, driver CUDA 13.0, 140 GiB), cudnn kernels";
        assert!(same_hardware(h200, &h200.replace("cuda:0", "cuda:7")));
        assert!(same_hardware("cuda:12", "cuda:3"));
        assert!(!same_hardware(h200, &h200.replace("H200", "H100")));
        assert!(!same_hardware(h200, &h200.replace("cudnn", "generic")));
        assert!(!same_hardware("cpu (Xeon, 2 threads)", "cpu (Xeon, 16 threads)"));
        assert!(same_hardware("cpu (Xeon, 2 threads)", "cpu (Xeon, 2 threads)"));
        assert!(!same_hardware("cuda:0", "0"));

        let config = serde_json::to_string(&configs()[0]).expect("serialises");
        let row = |id: i64, device: Option<&str>| crate::store::RunRow {
            id,
            key: format!("k{id}"),
            sweep: "e".into(),
            name: format!("r{id}"),
            config_json: config.clone(),
            status: crate::store::Status::Done,
            epochs_total: 2,
            epochs_done: 2,
            step: 0,
            steps_per_epoch: None,
            attempts: 1,
            worker: None,
            heartbeat_age: None,
            device: device.map(str::to_owned),
            error: None,
            metric: "test_acc".into(),
            best_epoch: None,
            best_metric: None,
            final_train_acc: None,
            final_test_acc: None,
            final_test_loss: None,
            images_per_sec: None,
            train_seconds: 10.0,
            note: None,
            classes: None,
            reference: None,
            peak_memory_bytes: None,
            rung: None,
        };
        let rows = [row(1, Some("cpu (Xeon, 2 threads)")), row(2, Some(h200)), row(3, None)];
        let on = |device: &str| history(&rows, device).iter().map(|s| s.seconds_per_epoch).collect::<Vec<_>>();
        assert_eq!(on("cpu (Xeon, 2 threads)"), [5.0]);
        assert_eq!(on(&h200.replace("cuda:0", "cuda:1")), [5.0]);
        assert!(on("cpu (Xeon, 4 threads)").is_empty());
        assert_eq!(elsewhere(&rows, "cpu (Xeon, 2 threads)"), 1);
        assert_eq!(elsewhere(&rows, "cpu (Xeon, 4 threads)"), 2);
    }

    #[test]
    fn durations_read_as_a_person_says_them() {
        assert_eq!(human(42.0), "42s");
        assert_eq!(human(125.0), "2m");
        assert_eq!(human(3.0 * 3600.0 + 20.0 * 60.0), "3h20m");
        assert_eq!(human(2.0 * 86_400.0 + 4.5 * 3600.0), "2d 4h");
    }

    #[test]
    fn a_probe_pace_scales_with_the_splits() {
        let pace = crate::train::probe::Pace { train: 0.002, test: 0.001, memory: None };
        assert!((per_epoch_from_pace(pace, 50_000, 10_000) - 110.0).abs() < 1e-9);
    }
}
