//! The trainer on tiny generated data, through the library API.

use candle_core::Device;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use sweep::record::{CheckpointKind, CheckpointRecord, EpochRecord, MemorySink};
use sweep::spec::{self, RunConfig};
use sweep::train::{self, data, Outcome, Progress, TrainError, TrainRequest};

fn config(extra: &str) -> RunConfig {
    let text = crate::tiny_sweep("t", 96, 2, extra);
    let s = spec::parse(Path::new("t.toml"), &text).unwrap();
    s.runs[0].config.clone()
}

struct Run<'a> {
    home: &'a Path,
    stop_after: Option<i64>,
    resume: Option<CheckpointRecord>,
}

#[allow(clippy::needless_pass_by_value)] // a `Run` literal per call reads best
fn train_once(cfg: &RunConfig, ds: &data::Dataset, run: Run, sink: &mut MemorySink) -> Result<Outcome, TrainError> {
    let stop = AtomicBool::new(false);
    let progress = Progress::default();
    let (stop, progress) = (&stop, &progress);
    std::thread::scope(|scope| {
        if let Some(k) = run.stop_after {
            // Plays the user pressing Ctrl-C once `k` batches are done.
            scope.spawn(move || {
                while progress.step.load(Ordering::SeqCst) < k {
                    std::thread::yield_now();
                }
                stop.store(true, Ordering::SeqCst);
            });
        }
        let req = TrainRequest {
            config: cfg,
            name: "t",
            dataset: ds,
            home: run.home,
            run_dir: "runs/t",
            resume: run.resume.as_ref(),
            device: &Device::Cpu,
            stop,
            cancel: &AtomicBool::new(false),
            progress,
            verbose: false,
            position: None,
        };
        let out = train::train(&req, sink);
        stop.store(true, Ordering::SeqCst);
        progress.step.store(i64::MAX, Ordering::SeqCst);
        out
    })
}

/// Everything but the timings.
fn numbers(e: &[EpochRecord]) -> Vec<[f64; 6]> {
    e.iter().map(|r| [r.epoch as f64, r.train_loss, r.train_acc, r.test_loss, r.test_acc, r.lr]).collect()
}

#[test]
fn training_learns_is_deterministic_and_resumes_exactly_mid_epoch() {
    let cfg = config("");
    let ds = data::load(&cfg.dataset).unwrap();

    let a_home = tempfile::tempdir().unwrap();
    let mut a = MemorySink::default();
    assert_eq!(
        train_once(&cfg, &ds, Run { home: a_home.path(), stop_after: None, resume: None }, &mut a).unwrap(),
        Outcome::Finished
    );
    assert_eq!(a.epochs.len(), 2);
    assert_eq!(a.epochs[1].lr, 0.025, "multistep milestone 1 halves the lr in the second epoch");
    assert!(a.epochs[1].train_loss < a.epochs[0].train_loss, "{:?}", numbers(&a.epochs));
    let latest = a.latest.clone().unwrap();
    assert_eq!((latest.kind, latest.epoch, latest.step), (CheckpointKind::Latest, 2, 0));
    assert!(a_home.path().join(&latest.path).exists() && a_home.path().join(&latest.state_path).exists());

    // Same seed, same numbers.
    let b_home = tempfile::tempdir().unwrap();
    let mut b = MemorySink::default();
    train_once(&cfg, &ds, Run { home: b_home.path(), stop_after: None, resume: None }, &mut b).unwrap();
    assert_eq!(numbers(&a.epochs), numbers(&b.epochs));

    // Stopped mid-epoch, then resumed: the same numbers as never stopped.
    let c_home = tempfile::tempdir().unwrap();
    let mut c = MemorySink::default();
    let out = train_once(&cfg, &ds, Run { home: c_home.path(), stop_after: Some(3), resume: None }, &mut c).unwrap();
    assert_eq!(out, Outcome::Interrupted);
    let mid = c.latest.clone().unwrap();
    assert!(mid.epoch == 0 && mid.step >= 3, "{mid:?}");
    assert!(c.epochs.is_empty());
    let out = train_once(&cfg, &ds, Run { home: c_home.path(), stop_after: None, resume: Some(mid) }, &mut c).unwrap();
    assert_eq!(out, Outcome::Finished);
    assert_eq!(numbers(&a.epochs), numbers(&c.epochs));

    // Another seed, other numbers.
    let mut other = cfg.clone();
    other.seed += 1;
    let d_home = tempfile::tempdir().unwrap();
    let mut d = MemorySink::default();
    train_once(&other, &ds, Run { home: d_home.path(), stop_after: None, resume: None }, &mut d).unwrap();
    assert_ne!(numbers(&a.epochs), numbers(&d.epochs));
}

#[test]
fn a_corrupt_or_missing_checkpoint_is_an_error_naming_the_file() {
    let cfg = config("");
    let ds = data::load(&cfg.dataset).unwrap();
    let home = tempfile::tempdir().unwrap();
    let mut s = MemorySink::default();
    let mut one = cfg.clone();
    one.epochs = 1;
    train_once(&one, &ds, Run { home: home.path(), stop_after: None, resume: None }, &mut s).unwrap();
    let ck = s.latest.clone().unwrap();
    let path = home.path().join(&ck.path);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    let err = train_once(&cfg, &ds, Run { home: home.path(), stop_after: None, resume: Some(ck.clone()) }, &mut s)
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, TrainError::Checkpoint { .. }) && msg.contains(&ck.path) && msg.contains("checksum"),
        "{msg}"
    );
    std::fs::remove_file(&path).unwrap();
    let err = train_once(&cfg, &ds, Run { home: home.path(), stop_after: None, resume: Some(ck.clone()) }, &mut s)
        .unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
}

#[test]
fn a_diverging_run_is_an_error_with_epoch_and_batch() {
    let cfg = config("[[run]]\noptimizer = { name = \"sgd\", lr = 1e30 }\n");
    let ds = data::load(&cfg.dataset).unwrap();
    let home = tempfile::tempdir().unwrap();
    let err =
        train_once(&cfg, &ds, Run { home: home.path(), stop_after: None, resume: None }, &mut MemorySink::default())
            .unwrap_err();
    assert!(matches!(err, TrainError::Diverged { epoch: 1, .. }), "{err}");
    assert!(err.to_string().contains("smaller learning rate"), "{err}");
}

#[test]
fn frozen_parameters_do_not_change_and_the_mlp_head_trains() {
    let cfg =
        config("[[run]]\nfreeze = { through = \"layer1\" }\nhead = { hidden = [16], dropout = [0.5] }\nepochs = 1\n");
    let ds = data::load(&cfg.dataset).unwrap();
    let before = train::models::build(&cfg, 10, &Device::Cpu).unwrap();
    let names: Vec<&str> = before.trainable.iter().map(|(n, _)| n.as_str()).collect();
    assert!(names.iter().all(|n| n.starts_with("layer2.") || n.starts_with("fc.")), "{names:?}");
    assert!(names.contains(&"fc.0.weight") && names.contains(&"fc.3.bias"), "{names:?}");
    let home = tempfile::tempdir().unwrap();
    let mut s = MemorySink::default();
    train_once(&cfg, &ds, Run { home: home.path(), stop_after: None, resume: None }, &mut s).unwrap();
    let saved = candle_core::safetensors::load(home.path().join(&s.latest.unwrap().path), &Device::Cpu).unwrap();
    let init = before.varmap.data().lock().unwrap();
    let same = |name: &str| {
        let a = saved[name].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = init[name].as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        a == b
    };
    assert!(same("conv1.weight") && same("layer1.conv.weight") && same("layer1.bn.weight"));
    assert!(!same("layer2.conv.weight") && !same("fc.0.weight"));
    // BatchNorm statistics of frozen layers still update in train mode, as in PyTorch.
    assert!(!same("bn1.running_mean"));
    // The checkpoint holds exactly the model's state_dict names.
    let mut keys: Vec<&String> = saved.keys().collect();
    keys.sort();
    assert_eq!(keys.len(), init.len());
    assert!(keys.iter().any(|k| *k == "layer1.bn.running_var"));
}

#[test]
fn unsupported_configurations_are_named() {
    let mut cfg = config("");
    cfg.model = "resnet19".into();
    assert!(train::check(&cfg)
        .unwrap_err()
        .to_string()
        .contains("model `resnet19` is not available (available: smallcnn, resnet18"));
    cfg.model = "resnet18".into();
    cfg.freeze = spec::Freeze::Through("block2".into());
    let err = train::check(&cfg).unwrap_err().to_string();
    assert!(err.contains("stages: stem, layer1, layer2, layer3, layer4"), "{err}");
    cfg.freeze = spec::Freeze::None;
    cfg.pretrained = Some("imagenet".into());
    cfg.model = "smallcnn".into();
    assert!(train::check(&cfg).unwrap_err().to_string().contains("no ImageNet weights for smallcnn"));
    let cfg = config("[augment.rot]\ntrain = [{ color_jitter = { hue = 0.7 } }]\n[[run]]\naugment = \"rot\"\n");
    let err = train::check(&cfg).unwrap_err().to_string();
    assert!(err.contains("augmentation set `rot` (train): color_jitter: hue must be at most 0.5"), "{err}");
    let cfg = config("[[run]]\nfreeze = { through = \"layer9\" }\n");
    assert!(train::check(&cfg).unwrap_err().to_string().contains("layer9"));
}

#[test]
fn early_stopping_ends_a_plateaued_run_and_survives_a_resume() {
    // A learning rate so small that nothing improves by min_delta after epoch 1.
    let cfg = config(
        "[[run]]\nepochs = 6\noptimizer = { name = \"sgd\", lr = 1e-9 }\n\
         early_stop = { metric = \"test_loss\", patience = 2, min_delta = 0.5 }\n",
    );
    let ds = data::load(&cfg.dataset).unwrap();
    let home = tempfile::tempdir().unwrap();
    let mut s = MemorySink::default();
    let out = train_once(&cfg, &ds, Run { home: home.path(), stop_after: None, resume: None }, &mut s).unwrap();
    let Outcome::StoppedEarly { epoch, note } = out else { panic!("{out:?}") };
    assert_eq!(epoch, 3);
    assert_eq!(s.epochs.len(), 3);
    assert_eq!(note, "stopped early after epoch 3: test_loss did not improve for 2 epochs");
    assert!(s.epochs.iter().all(|e| e.test_top5.is_some_and(|t| t >= e.test_acc)));
    // The confusion matrix counts every test image once; its diagonal is the top-1 accuracy.
    for e in &s.epochs {
        let c = e.confusion.as_ref().unwrap();
        assert_eq!(c.len(), 10);
        assert_eq!(c.iter().flatten().sum::<u64>(), 40);
        let diag: u64 = (0..10).map(|i| c[i][i]).sum();
        assert!((100.0 * diag as f64 / 40.0 - e.test_acc).abs() < 1e-9);
        let per_class = train::per_class_accuracy(c);
        assert_eq!(per_class.len(), 10);
    }
    // Resuming from the last checkpoint (a kill before the run was marked done)
    // does not train further.
    let mut again = MemorySink::default();
    let out = train_once(&cfg, &ds, Run { home: home.path(), stop_after: None, resume: s.latest.clone() }, &mut again)
        .unwrap();
    assert!(matches!(out, Outcome::StoppedEarly { epoch: 3, .. }), "{out:?}");
    assert!(again.epochs.is_empty());
    // Without early stopping the same run trains all 6 epochs.
    let mut plain = cfg.clone();
    plain.early_stop = None;
    let mut s = MemorySink::default();
    let home = tempfile::tempdir().unwrap();
    assert_eq!(
        train_once(&plain, &ds, Run { home: home.path(), stop_after: None, resume: None }, &mut s).unwrap(),
        Outcome::Finished
    );
    assert_eq!(s.epochs.len(), 6);
}

/// The term report's ResNet18 recipe, at tiny size: resnet18 (ImageNet stem,
/// 32x32 here instead of 224), SGD momentum 0.9, lr 0.01 x0.5 then x0.1 at
/// milestones (1 and 2 here instead of 5 and 10), batch 50, every epoch recorded
/// with the lr it used, the best epoch chosen on test accuracy.
#[test]
fn the_reports_resnet18_recipe_runs_at_tiny_size() {
    let text = r#"
name = "recipe"
dataset = { name = "synthetic", train_size = 100, test_size = 50 }
metric = "test_acc"
seed = 3

[defaults]
model = "resnet18"
batch_size = 50
epochs = 3
optimizer = { name = "sgd", lr = 0.01, momentum = 0.9 }
schedule = { name = "multistep", milestones = [1, 2], factors = [0.5, 0.1] }

[[run]]
"#;
    let cfg = spec::parse(Path::new("recipe.toml"), text).unwrap().runs[0].config.clone();
    let ds = data::load(&cfg.dataset).unwrap();
    let home = tempfile::tempdir().unwrap();
    let mut s = MemorySink::default();
    let out = train_once(&cfg, &ds, Run { home: home.path(), stop_after: None, resume: None }, &mut s).unwrap();
    assert_eq!(out, Outcome::Finished);
    let lrs: Vec<f64> = s.epochs.iter().map(|e| e.lr).collect();
    assert_eq!(lrs.len(), 3);
    for (a, b) in lrs.iter().zip([0.01, 0.005, 0.001]) {
        assert!((a - b).abs() < 1e-12, "{lrs:?}");
    }
    assert!(s.epochs.iter().all(|e| e.train_loss.is_finite() && e.test_top5.is_some()));
    let best = s.best.as_ref().unwrap();
    let best_acc = s.epochs.iter().map(|e| e.test_acc).fold(f64::MIN, f64::max);
    assert_eq!(best.metric, Some(best_acc));
    // The latest checkpoint holds SGD's momentum buffers for resuming.
    let state =
        candle_core::safetensors::load(home.path().join(&s.latest.as_ref().unwrap().state_path), &Device::Cpu).unwrap();
    assert!(state.keys().any(|k| k.starts_with("momentum_buffer.layer4.1.conv2.weight")), "momentum kept");
}

/// `val_split` holds out a seeded share of the training set, evaluates it every
/// epoch, and `metric = "val_acc"` picks the best epoch on it; the test numbers
/// are still recorded. Without a split a validation metric is refused.
#[test]
fn a_validation_split_is_held_out_and_can_choose_the_best_epoch() {
    let (train, val) = train::validation_split(100, 0.2, 7);
    assert_eq!((train.len(), val.len()), (80, 20));
    assert!(val.iter().all(|i| !train.contains(i)));
    assert_eq!(train::validation_split(100, 0.2, 7), (train.clone(), val.clone()), "seeded");
    assert_ne!(train::validation_split(100, 0.2, 8).1, val);
    assert_eq!(train::validation_split(5, 0.0, 7).0, vec![0, 1, 2, 3, 4]);

    let text = crate::tiny_sweep("v", 96, 3, "[[run]]\nval_split = 0.25\n")
        .replace("metric = \"test_acc\"", "metric = \"val_acc\"");
    let cfg = spec::parse(Path::new("v.toml"), &text).unwrap().runs[0].config.clone();
    let ds = data::load(&cfg.dataset).unwrap();
    let home = tempfile::tempdir().unwrap();
    let mut s = MemorySink::default();
    train_once(&cfg, &ds, Run { home: home.path(), stop_after: None, resume: None }, &mut s).unwrap();
    assert!(s.epochs.iter().all(|e| e.val_acc.is_some() && e.val_loss.is_some()));
    let best_val = s.epochs.iter().map(|e| e.val_acc.unwrap()).fold(f64::MIN, f64::max);
    assert_eq!(s.best.as_ref().unwrap().metric, Some(best_val));
    // Train accuracy is a share of the 72 training images: a whole number of them.
    for e in &s.epochs {
        let correct = e.train_acc * 72.0 / 100.0;
        assert!((correct - correct.round()).abs() < 1e-6, "{}", e.train_acc);
    }

    let bad = crate::tiny_sweep("v", 96, 3, "[[run]]\n").replace("metric = \"test_acc\"", "metric = \"val_acc\"");
    let err = spec::parse(Path::new("v.toml"), &bad).unwrap_err().to_string();
    assert!(err.contains("`val_split`") && err.contains("needs a validation split"), "{err}");
}

/// `precision = "bf16"`: convolutions and matmuls in bfloat16 from f32
/// weights. The loss of one batch is within bf16 rounding of the f32 loss, the
/// run trains, and its checkpoint holds f32 weights; `tf32` changes nothing on
/// a CPU.
#[test]
fn bf16_mixed_precision_trains_close_to_f32_with_f32_weights() {
    use candle_core::{DType, Tensor};
    let cfg = config("");
    let ds = data::load(&cfg.dataset).unwrap();
    let mut bf = cfg.clone();
    bf.precision = spec::Precision::Bf16;
    // One batch through both models built from the same seed.
    let x = Tensor::from_vec(
        ds.train.images[..8 * 3 * 32 * 32].iter().map(|&v| f32::from(v) / 255.0).collect::<Vec<_>>(),
        (8, 3, 32, 32),
        &Device::Cpu,
    )
    .unwrap();
    let y = Tensor::from_slice(&ds.train.labels[..8], 8, &Device::Cpu).unwrap();
    let loss = |c: &RunConfig| {
        let built = train::models::build(c, ds.classes.len(), &Device::Cpu).unwrap();
        let logits = built.model.forward(&x, false, &mut train::rng::Rng::new(0)).unwrap();
        assert_eq!(logits.dtype(), DType::F32);
        train::cross_entropy(&logits, &y, 0.0).unwrap().to_scalar::<f32>().unwrap()
    };
    let (l32, l16) = (loss(&cfg), loss(&bf));
    assert!(l32 != l16 && (l32 - l16).abs() < 0.02 * l32, "f32 {l32} bf16 {l16}");

    let home = tempfile::tempdir().unwrap();
    let mut a = MemorySink::default();
    train_once(&bf, &ds, Run { home: home.path(), stop_after: None, resume: None }, &mut a).unwrap();
    assert!(a.epochs[1].train_loss < a.epochs[0].train_loss, "{:?}", numbers(&a.epochs));
    let weights = candle_core::safetensors::load(home.path().join(&a.latest.unwrap().path), &Device::Cpu).unwrap();
    assert!(weights.values().all(|t| matches!(t.dtype(), DType::F32 | DType::I64)));

    let f32_home = tempfile::tempdir().unwrap();
    let mut f = MemorySink::default();
    train_once(&cfg, &ds, Run { home: f32_home.path(), stop_after: None, resume: None }, &mut f).unwrap();
    let rel = (a.epochs[0].train_loss - f.epochs[0].train_loss).abs() / f.epochs[0].train_loss;
    assert!(rel < 0.05, "bf16 {:?} f32 {:?}", numbers(&a.epochs), numbers(&f.epochs));
    let mut tf = cfg.clone();
    tf.precision = spec::Precision::Tf32;
    let tf_home = tempfile::tempdir().unwrap();
    let mut t = MemorySink::default();
    train_once(&tf, &ds, Run { home: tf_home.path(), stop_after: None, resume: None }, &mut t).unwrap();
    assert_eq!(numbers(&t.epochs), numbers(&f.epochs));
}
