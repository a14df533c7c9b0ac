//! `sweep export` on disk (the real TensorBoard and MLflow libraries read the
//! same output in scripts/check-export.sh, run by .ci/run).

use crate::cli::{run, runs, stdout};
use sweep::export::tensorboard::crc32c;

/// The records of a TFRecord file, each frame's two CRCs checked.
fn tfrecords(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mask = |c: u32| c.rotate_right(15).wrapping_add(0xa282_ead8);
    let (mut out, mut at) = (Vec::new(), 0);
    while at < bytes.len() {
        let len_bytes = &bytes[at..at + 8];
        let len = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
        assert_eq!(u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap()), mask(crc32c(len_bytes)));
        let data = &bytes[at + 12..at + 12 + len];
        let crc = u32::from_le_bytes(bytes[at + 12 + len..at + 16 + len].try_into().unwrap());
        assert_eq!(crc, mask(crc32c(data)));
        out.push(data.to_vec());
        at += 16 + len;
    }
    out
}

#[test]
fn tensorboard_and_mlflow_exports_hold_every_epoch_and_refresh_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let file = crate::write_sweep(
        dir.path(),
        "x.toml",
        &crate::tiny_sweep("x", 32, 2, "[[grid]]\noptimizer.lr = [0.05, 0.1]\n"),
    );
    assert!(run(&home, &["-q", "submit", file.to_str().unwrap()]).status.success());
    let rows = runs(&home);
    let tb = dir.path().join("tb");
    for _ in 0..2 {
        let out = run(&home, &["export", "--format", "tensorboard", tb.to_str().unwrap()]);
        assert!(stdout(&out).contains("exported 2 run(s), 4 epoch(s)"), "{}", stdout(&out));
    }
    for r in &rows {
        let folder = tb.join(format!("x-{}-{}", r.name, &r.key[..10]));
        let files: Vec<_> = std::fs::read_dir(&folder).unwrap().map(|e| e.unwrap().path()).collect();
        assert_eq!(files.len(), 1, "exporting again replaces the event file: {files:?}");
        let records = tfrecords(&std::fs::read(&files[0]).unwrap());
        // Version, hparams start, 2 epochs, hparams end.
        assert_eq!(records.len(), 5);
        assert!(records[0].windows(13).any(|w| w == b"brain.Event:2"));
        assert!(records[1].windows(28).any(|w| w == b"_hparams_/session_start_info"));
        assert!(records[2].windows(10).any(|w| w == b"train/loss"));
    }

    let ml = dir.path().join("mlruns");
    for _ in 0..2 {
        assert!(run(&home, &["export", "--format", "mlflow", ml.to_str().unwrap()]).status.success());
    }
    assert!(std::fs::read_to_string(ml.join("0/meta.yaml")).unwrap().contains("name: \"Default\""));
    let exp = std::fs::read_to_string(ml.join("1/meta.yaml")).unwrap();
    assert!(exp.contains("name: \"x\"") && exp.contains("experiment_id: '1'"), "{exp}");
    for r in &rows {
        let run_dir = ml.join("1").join(&r.key[..32]);
        let meta = std::fs::read_to_string(run_dir.join("meta.yaml")).unwrap();
        assert!(meta.contains(&format!("run_name: \"{}\"", r.name)) && meta.contains("status: 3"), "{meta}");
        let lr = std::fs::read_to_string(run_dir.join("params/optimizer.lr")).unwrap();
        assert_eq!(lr.parse::<f64>().unwrap(), if r.name == "lr=0.05" { 0.05 } else { 0.1 });
        let acc = std::fs::read_to_string(run_dir.join("metrics/test_acc")).unwrap();
        let epochs = crate::cli::epochs(&home, r.id);
        let lines: Vec<&str> = acc.lines().collect();
        assert_eq!(lines.len(), 2, "each epoch once after two exports: {acc}");
        for (line, e) in lines.iter().zip(&epochs) {
            let parts: Vec<&str> = line.split(' ').collect();
            assert_eq!(parts[1].parse::<f64>().unwrap(), e.test_acc);
            assert_eq!(parts[2], e.epoch.to_string());
        }
        assert_eq!(std::fs::read_to_string(run_dir.join("tags/sweep.key")).unwrap(), r.key);
        assert!(run_dir.join("artifacts/best.safetensors").exists());
        assert!(run_dir.join("artifacts/config.json").exists());
    }
}
