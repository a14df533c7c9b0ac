//! The output of `plan`, `status`, `results`, `show` and `report --format md`
//! as snapshots (insta), on a small database written through the store with
//! fixed numbers, so that nothing but the code under test decides the text.
//! A change of output shows up as a changed `.snap` file to review; accept it
//! with `INSTA_UPDATE=always cargo test snapshots` (or `cargo insta review`).
//! Temporary paths are filtered out; times are fixed by the records.

use crate::cli::{run, stderr, stdout};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use sweep::record::{CheckpointKind, CheckpointRecord, EpochRecord};
use sweep::spec;
use sweep::store::{Status, Store};

const SWEEP: &str = r#"
name = "snap"
description = "Three learning rates of the quickstart model"
dataset = { name = "synthetic", train_size = 64, test_size = 32 }
metric = "test_acc"
seed = 7

[defaults]
model = "smallcnn"
batch_size = 16
epochs = 3
augment = "light"
optimizer = { name = "sgd", lr = 0.1, momentum = 0.9 }
schedule = { name = "multistep", milestones = [2], factors = [0.1] }

[augment.light]
train = [{ hflip = {} }]
test = []

[[grid]]
optimizer.lr = [0.1, 0.05, 0.01]

[[run]]
name = "adam"
optimizer = { name = "adam", lr = 0.001 }
reference = { test_acc = 61.5, source = "term report", note = "table 2" }
"#;

fn epoch(n: i64, test_acc: f64, lr: f64) -> EpochRecord {
    EpochRecord {
        epoch: n,
        train_loss: 2.0 - 0.25 * n as f64,
        train_acc: 20.0 + 10.0 * n as f64,
        test_loss: 2.1 - 0.2 * n as f64,
        test_acc,
        test_top5: Some(70.0 + n as f64),
        val_loss: None,
        val_acc: None,
        confusion: Some(vec![vec![3, 1], vec![2, 4]]),
        lr,
        seconds: 1.5 * n as f64,
        images_per_sec: 40.0 + n as f64,
        peak_memory_bytes: Some(50 << 20),
    }
}

fn ckpt(kind: CheckpointKind, e: i64, metric: f64) -> CheckpointRecord {
    CheckpointRecord {
        kind,
        epoch: e,
        step: 0,
        path: format!("runs/fixed/e{e}.safetensors"),
        sha256: "00".repeat(32),
        state_path: format!("runs/fixed/e{e}.state.safetensors"),
        state_sha256: "11".repeat(32),
        metric: Some(metric),
    }
}

/// The home and the sweep file: one run done in 3 epochs, one failed after
/// one, one interrupted mid-epoch, one still queued.
fn fixed() -> &'static (tempfile::TempDir, PathBuf) {
    static HOME: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    HOME.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("snap.toml");
        std::fs::write(&file, SWEEP).unwrap();
        let spec = spec::load(&file).unwrap();
        let home = dir.path().join("home");
        crate::cli::block(async {
            let store = Store::open(&home).await.unwrap();
            store.submit(&spec).await.unwrap();
            let (w, device) = ("fixture:1", "cpu (Fixture CPU, 2 threads)");
            let classes = ["cat".to_owned(), "dog".to_owned()];
            // lr 0.1: done, best at epoch 2.
            let r = store.claim_next(w, device).await.unwrap().unwrap();
            store.set_data(&r.lease(), &classes, "0f", false).await.unwrap();
            for (n, acc, lr) in [(1, 50.0, 0.1), (2, 62.5, 0.1), (3, 59.375, 0.01)] {
                let best = (n <= 2).then(|| ckpt(CheckpointKind::Best, n, acc));
                store
                    .record_epoch(&r.lease(), &epoch(n, acc, lr), &ckpt(CheckpointKind::Latest, n, acc), best.as_ref())
                    .await
                    .unwrap();
            }
            store.finish(&r.lease(), Status::Done, None).await.unwrap();
            // lr 0.05: failed after one epoch.
            let r = store.claim_next(w, device).await.unwrap().unwrap();
            store.set_data(&r.lease(), &classes, "0f", false).await.unwrap();
            let latest = ckpt(CheckpointKind::Latest, 1, 40.0);
            store
                .record_epoch(&r.lease(), &epoch(1, 40.0, 0.05), &latest, Some(&ckpt(CheckpointKind::Best, 1, 40.0)))
                .await
                .unwrap();
            store.finish(&r.lease(), Status::Failed, Some("dataset: the archive is corrupt")).await.unwrap();
            // lr 0.01: interrupted in its second epoch.
            let r = store.claim_next(w, device).await.unwrap().unwrap();
            store.set_data(&r.lease(), &classes, "0f", false).await.unwrap();
            store
                .record_epoch(&r.lease(), &epoch(1, 31.25, 0.01), &latest, Some(&ckpt(CheckpointKind::Best, 1, 31.25)))
                .await
                .unwrap();
            store.heartbeat(&r.lease(), 2, 4).await.unwrap();
            let mid = CheckpointRecord { step: 2, ..ckpt(CheckpointKind::Latest, 1, 31.25) };
            store.record_interrupt(&r.lease(), Some(&mid)).await.unwrap();
            // adam: still queued.
            store.close().await;
        });
        (dir, file)
    })
}

/// Runs `sweep` on the fixed home and returns its standard output, with the
/// temporary folder written as `[TMP]`.
fn output(args: &[&str]) -> String {
    let (dir, _) = fixed();
    let out = run(&dir.path().join("home"), args);
    assert!(out.status.success(), "sweep {args:?}: {}", stderr(&out));
    let text = stdout(&out);
    let tmp = dir.path().display().to_string();
    text.replace(&tmp, "[TMP]")
}

fn file() -> String {
    fixed().1.display().to_string()
}

#[test]
fn plan() {
    insta::assert_snapshot!(output(&["plan", "--no-estimate", &file()]));
}

#[test]
fn status() {
    insta::assert_snapshot!(output(&["status"]));
}

#[test]
fn results() {
    insta::assert_snapshot!(output(&["results", "--sweep", "snap"]));
}

#[test]
fn results_grouped_and_sorted() {
    insta::assert_snapshot!(output(&[
        "results",
        "--sweep",
        "snap",
        "--sort",
        "-test_acc",
        "--columns",
        "name,status,best,test_acc"
    ]));
}

#[test]
fn show() {
    let text = output(&["show", "snap/lr=0.1"]);
    insta::with_settings!({ filters => vec![
        // When the run was queued and started: the clock's, not the code's.
        (r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", "[TIME]"),
    ]}, {
        insta::assert_snapshot!(text);
    });
}

#[test]
fn report_markdown() {
    let text = output(&["report", "--sweep", "snap", "--format", "md"]);
    insta::with_settings!({ filters => vec![
        // The day the report was made, and the version that made it.
        (r"sweep \d+\.\d+\.\d+ on \d{4}-\d\d-\d\d", "sweep [VERSION] on [DATE]"),
    ]}, {
        insta::assert_snapshot!(text);
    });
}

/// The fixture is what the snapshots claim it is.
#[test]
fn the_fixed_database_has_one_run_in_each_state() {
    let (dir, _) = fixed();
    let rows = crate::cli::block(async {
        let s = Store::open(&dir.path().join("home")).await.unwrap();
        s.runs(Some("snap")).await.unwrap()
    });
    let statuses: Vec<Status> = rows.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [Status::Done, Status::Failed, Status::Interrupted, Status::Queued]);
    assert!(Path::new(&dir.path().join("home/sweep.db")).exists());
}

/// The term report's plan: its lr column shows although the optimizers'
/// names differ, and `freeze` is one column. (The run ids hash the
/// dataset's absolute path, so they depend on where the checkout is.)
#[test]
fn plan_of_the_term_report() {
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments/report.toml");
    let text = output(&["plan", "--no-estimate", file.to_str().unwrap()]);
    // Where CIFAR-10 is depends on the machine (its cache, or a download): either line.
    let whereabouts = r"(?m)^dataset: cifar10(, read from /.*| is not on this machine: its first run downloads \S+/cifar-10-python.tar.gz \(about 170 MB\) into /.*)$";
    let filters = vec![(r"(?m)^[0-9a-f]{10}  ", "[ID]        "), (whereabouts, "dataset: cifar10 [WHERE]")];
    insta::with_settings!({ filters => filters }, {
        insta::assert_snapshot!(text);
    });
}

/// A search's plan: the random trials it expands to (names and shortened
/// sampled values), what the search samples, and ASHA's rungs; for TPE the
/// start-up trials and that the rest are proposed online.
#[test]
fn plan_of_searches() {
    let dir = tempfile::tempdir().unwrap();
    let text = crate::tiny_sweep(
        "searches",
        64,
        9,
        "[[search]]\nname = \"rnd\"\nmethod = \"random\"\ncount = 4\nseed = 3\n\
         \"optimizer.lr\" = { log_uniform = [1e-4, 1e-1] }\nbatch_size = { choice = [16, 32] }\n\
         [[search]]\nname = \"tpe\"\nmethod = \"tpe\"\ncount = 20\nstartup = 2\nseed = 3\n\
         \"optimizer.weight_decay\" = { uniform = [0, 1e-3] }\n",
    );
    // A sweep-level key: before the first table.
    let text = text.replacen(
        "[defaults]",
        "early_terminate = { method = \"asha\", min_epochs = 1, reduction_factor = 3 }\n[defaults]",
        1,
    );
    let file = crate::write_sweep(dir.path(), "searches.toml", &text);
    let out = run(dir.path(), &["plan", "--no-estimate", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    insta::assert_snapshot!(stdout(&out));
}
