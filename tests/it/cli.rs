//! The `sweep` binary end to end on generated data.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use sweep::record::{CheckpointKind, EpochRecord};
use sweep::store::{RunRow, Status, Store};

pub fn sweep(home: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sweep"));
    c.arg("--home")
        .arg(home)
        .env_remove("SWEEP_HOME")
        .env_remove("COLUMNS")
        .env("SWEEP_HEARTBEAT_SECS", "0.1")
        .env("RUST_LOG", "warn");
    c
}

pub fn run(home: &Path, args: &[&str]) -> Output {
    let out = sweep(home).args(args).output().unwrap();
    eprintln!(
        "$ sweep {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn block<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}

pub fn runs(home: &Path) -> Vec<RunRow> {
    block(async {
        let s = Store::open(home).await.unwrap();
        let r = s.runs(None).await.unwrap();
        s.close().await;
        r
    })
}

pub fn epochs(home: &Path, id: i64) -> Vec<EpochRecord> {
    block(async {
        let s = Store::open(home).await.unwrap();
        let e = s.epochs(id).await.unwrap();
        s.close().await;
        e
    })
}

pub fn numbers(e: &[EpochRecord]) -> Vec<[f64; 6]> {
    e.iter().map(|r| [r.epoch as f64, r.train_loss, r.train_acc, r.test_loss, r.test_acc, r.lr]).collect()
}

pub fn wait_until(child: &mut Child, home: &Path, what: &str, cond: impl Fn(&[RunRow]) -> bool) {
    let start = Instant::now();
    loop {
        assert!(child.try_wait().unwrap().is_none(), "the worker exited before {what}");
        if home.join("sweep.db").exists() && cond(&runs(home)) {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(300), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn submit_results_report_and_resubmit_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let file = crate::write_sweep(
        dir.path(),
        "e2e.toml",
        &crate::tiny_sweep("e2e", 64, 2, "[[grid]]\noptimizer.lr = [0.05, 0.1]\n"),
    );
    let f = file.to_str().unwrap();

    let out = run(&home, &["submit", f]);
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(text.contains("2 run(s): 2 queued, 0 already done"), "{text}");
    assert!(text.contains("lr=0.05") && text.contains("lr=0.1") && text.contains("best_test_acc"), "{text}");
    assert!(stderr(&out).contains("epoch 2/2"), "per-epoch lines on stderr");

    let rows = runs(&home);
    assert_eq!(rows.len(), 2);
    for r in &rows {
        assert_eq!((r.status, r.epochs_done, r.attempts), (Status::Done, 2, 1), "{r:?}");
        assert_eq!(epochs(&home, r.id).iter().map(|e| e.epoch).collect::<Vec<_>>(), vec![1, 2]);
        assert!(r.best_epoch.is_some() && r.best_metric.is_some());
        // Checkpoints: the files exist, match their checksums, and nothing else is kept.
        let ck = block(async { Store::open(&home).await.unwrap().checkpoints(r.id).await.unwrap() });
        assert!(ck.iter().any(|c| c.kind == CheckpointKind::Latest && c.epoch == 2));
        assert!(ck.iter().any(|c| c.kind == CheckpointKind::Best && Some(c.epoch) == r.best_epoch));
        let mut expected = vec!["config.json".to_owned(), "log.txt".to_owned()];
        for c in &ck {
            for (p, sha) in [(&c.path, &c.sha256), (&c.state_path, &c.state_sha256)] {
                assert_eq!(&sweep::train::checkpoint::sha256_file(&home.join(p)).unwrap(), sha);
                expected.push(Path::new(p).file_name().unwrap().to_string_lossy().into_owned());
            }
        }
        expected.sort();
        expected.dedup();
        let dir = home.join(Path::new(&ck[0].path).parent().unwrap());
        let mut files: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        files.sort();
        assert_eq!(files, expected);
    }

    let json: serde_json::Value = serde_json::from_slice(&run(&home, &["results", "--format", "json"]).stdout).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 2);
    assert_eq!(json[0]["status"], "done");
    assert_eq!(json[0]["lr"], 0.05, "parameters keep their JSON type");
    assert_eq!(json[0]["status"], "done");
    let csv = stdout(&run(&home, &["results", "--sweep", "e2e", "--format", "csv"]));
    assert_eq!(csv.lines().count(), 3, "{csv}");
    assert!(csv.lines().next().unwrap().contains(",lr,status,"), "{csv}");

    let md = dir.path().join("report.md");
    assert!(run(&home, &["report", "--sweep", "e2e", "-o", md.to_str().unwrap()]).status.success());
    let md = std::fs::read_to_string(md).unwrap();
    assert!(md.starts_with("# Sweep report: e2e") && md.contains("★") && md.contains("## Epochs"), "{md}");
    let rep: serde_json::Value = serde_json::from_slice(&run(&home, &["report", "--format", "json"]).stdout).unwrap();
    assert_eq!(rep["runs"][1]["epochs"].as_array().unwrap().len(), 2);
    assert_eq!(stdout(&run(&home, &["report", "--format", "csv"])).lines().count(), 5);
    let status: serde_json::Value =
        serde_json::from_slice(&run(&home, &["status", "--format", "json"]).stdout).unwrap();
    assert_eq!(status["counts"]["done"], 2);

    // Submitting again trains nothing.
    let again = run(&home, &["submit", f]);
    assert!(again.status.success());
    assert!(stdout(&again).contains("2 already done"), "{}", stdout(&again));
    let again: serde_json::Value =
        serde_json::from_slice(&run(&home, &["submit", "--format", "json", f]).stdout).unwrap();
    assert_eq!(again["submitted"][1]["outcome"], "already_done");
    assert_eq!(again["worker"]["runs"].as_array().unwrap().len(), 0);
    assert_eq!(again["results"][1]["status"], "done");
    assert!(runs(&home).iter().all(|r| r.attempts == 1 && r.epochs_done == 2));

    let missing = run(&home, &["results", "--sweep", "nope"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(stderr(&missing).contains("no sweep named `nope` (known: e2e)"));
}

#[test]
fn a_bad_sweep_file_is_refused_with_its_location_and_nothing_is_queued() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let bad = crate::write_sweep(
        dir.path(),
        "bad.toml",
        &crate::tiny_sweep("bad", 64, 1, "[[grid]]\nbatch_size = [8, \"x\"]\n"),
    );
    let out = run(&home, &["submit", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("bad.toml:19:1: `batch_size`: value \"x\""), "{err}");
    assert!(err.contains("nothing was queued"), "{err}");
    assert!(!home.join("sweep.db").exists());

    let zoo =
        crate::write_sweep(dir.path(), "zoo.toml", &crate::tiny_sweep("zoo", 64, 1, "[[run]]\nmodel = \"resnet19\"\n"));
    let out = run(&home, &["submit", zoo.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("zoo.toml:18:1: run `run1`: model `resnet19` is not available"), "{}", stderr(&out));
    assert!(!home.join("sweep.db").exists());
}

#[test]
#[allow(unsafe_code)] // kill(2) on our own child: see the SAFETY comment
fn a_killed_worker_and_ctrl_c_both_resume_to_the_same_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let file = crate::write_sweep(
        dir.path(),
        "k.toml",
        &crate::tiny_sweep("k", 320, 3, "[[grid]]\noptimizer.lr = [0.05, 0.02]\n"),
    );
    let f = file.to_str().unwrap();

    // The reference: never interrupted.
    let base = dir.path().join("base");
    assert!(run(&base, &["-q", "submit", f]).status.success());
    let reference: Vec<_> = runs(&base).iter().map(|r| numbers(&epochs(&base, r.id))).collect();
    assert_eq!(reference[0].len(), 3);

    // kill -9 during the first run's second epoch.
    let home = dir.path().join("killed");
    assert!(run(&home, &["submit", "--queue-only", f]).status.success());
    let mut child = sweep(&home).args(["-q", "worker"]).stderr(Stdio::null()).spawn().unwrap();
    wait_until(&mut child, &home, "epoch 1 of run 1", |r| r[0].epochs_done >= 1 && r[0].step >= 2);
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(runs(&home)[0].status, Status::Running, "a killed worker leaves its run marked running");
    let out = run(&home, &["worker"]);
    assert!(out.status.success());
    assert!(stderr(&out).contains("1 abandoned run(s) recovered"), "{}", stderr(&out));
    let after = runs(&home);
    assert!(after.iter().all(|r| r.status == Status::Done));
    assert_eq!(after[0].attempts, 2);
    let got: Vec<_> = after.iter().map(|r| numbers(&epochs(&home, r.id))).collect();
    assert_eq!(got, reference, "resumed after kill -9");

    // Ctrl-C in the middle of an epoch: saved, marked interrupted, resumed exactly.
    let home = dir.path().join("ctrlc");
    assert!(run(&home, &["submit", "--queue-only", f]).status.success());
    let mut child = sweep(&home).args(["-q", "worker"]).stderr(Stdio::null()).spawn().unwrap();
    wait_until(&mut child, &home, "the middle of epoch 2", |r| r[0].epochs_done == 1 && r[0].step >= 3);
    // SAFETY: sending SIGINT to our own child process.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    assert_eq!(child.wait().unwrap().code(), Some(130));
    let rows = runs(&home);
    assert_eq!((rows[0].status, rows[1].status), (Status::Interrupted, Status::Queued));
    let ck = block(async { Store::open(&home).await.unwrap().checkpoints(rows[0].id).await.unwrap() });
    let latest = ck.iter().find(|c| c.kind == CheckpointKind::Latest).unwrap();
    assert!(latest.epoch == 1 && latest.step >= 3, "{latest:?}");
    assert!(stdout(&run(&home, &["status"])).contains("interrupted"));
    assert!(run(&home, &["-q", "worker"]).status.success());
    let got: Vec<_> = runs(&home).iter().map(|r| numbers(&epochs(&home, r.id))).collect();
    assert_eq!(got, reference, "resumed after Ctrl-C");
}

fn cifar_record(label: u8, fill: u8) -> Vec<u8> {
    let mut r = vec![fill; 3073];
    r[0] = label;
    r
}

#[test]
fn failing_runs_are_recorded_and_the_sweep_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let diverge = crate::write_sweep(
        dir.path(),
        "d.toml",
        &crate::tiny_sweep("d", 48, 1, "[[grid]]\noptimizer.lr = [1e30, 0.05]\n"),
    );

    // A CIFAR-10 binary folder with one truncated batch file.
    let data = dir.path().join("cifar");
    std::fs::create_dir(&data).unwrap();
    let records: Vec<u8> = (0..20u8).flat_map(|i| cifar_record(i % 10, i * 10)).collect();
    for i in 2..=5 {
        std::fs::write(data.join(format!("data_batch_{i}.bin")), &records).unwrap();
    }
    std::fs::write(data.join("data_batch_1.bin"), &records[..5000]).unwrap();
    std::fs::write(data.join("test_batch.bin"), &records).unwrap();
    let text = crate::tiny_sweep("c", 64, 1, "").replace(
        "dataset = { name = \"synthetic\", train_size = 64, test_size = 40 }",
        &format!("dataset = {{ name = \"cifar10\", path = \"{}\" }}", data.display()),
    );
    let cifar = crate::write_sweep(dir.path(), "c.toml", &text);

    assert!(run(&home, &["submit", "--queue-only", cifar.to_str().unwrap()]).status.success());
    let out = run(&home, &["submit", diverge.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "a failed run makes the exit code 1");
    let rows = runs(&home);
    let by_name = |n: &str| rows.iter().find(|r| r.name == n).unwrap();
    let c = by_name("default");
    assert_eq!(c.status, Status::Failed);
    assert!(
        c.error.as_deref().unwrap().contains("data_batch_1.bin") && c.error.as_deref().unwrap().contains("truncated"),
        "{c:?}"
    );
    let d = by_name("lr=1e30");
    assert_eq!(d.status, Status::Diverged);
    assert!(d.error.as_deref().unwrap().contains("diverged: loss"), "{d:?}");
    assert!(stderr(&out).contains("1 diverged"), "{}", stderr(&out));
    assert_eq!(by_name("lr=0.05").status, Status::Done);
    let status = stdout(&run(&home, &["status"]));
    assert!(status.contains("1 failed") && status.contains("1 diverged"), "{status}");

    // Fixing the data and submitting again retries the failed run, which now trains.
    std::fs::write(data.join("data_batch_1.bin"), &records).unwrap();
    let out = run(&home, &["submit", cifar.to_str().unwrap()]);
    assert!(out.status.success());
    assert!(stdout(&out).contains("1 requeued (failed or cancelled)"), "{}", stdout(&out));
    let c = runs(&home).into_iter().find(|r| r.name == "default").unwrap();
    assert_eq!((c.status, c.epochs_done), (Status::Done, 1));
}

/// On the CPU an allocation that fails kills the worker, and the queue with it: a run whose training
/// step would take more memory than sweep may take (`SWEEP_MEMORY` caps it) fails before it starts,
/// saying what it would take, and the next run trains. A batch of at most 16 is not measured.
#[test]
fn a_run_too_big_for_memory_fails_before_it_starts_and_the_queue_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let file =
        crate::write_sweep(dir.path(), "m.toml", &crate::tiny_sweep("m", 48, 1, "[[grid]]\nbatch_size = [32, 8]\n"));
    let out = sweep(&home).env("SWEEP_MEMORY", "1M").args(["submit", file.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let rows = runs(&home);
    let by_name = |n: &str| rows.iter().find(|r| r.name == n).unwrap();
    let big = by_name("batch_size=32");
    assert_eq!((big.status, big.epochs_done), (Status::Failed, 0));
    let error = big.error.as_deref().unwrap();
    for part in [
        "out of memory before it starts: a training step of 32 images would take about",
        "(measured here: ",
        "and sweep may take 0.0 KiB more (MemAvailable, its cgroup's limit, or SWEEP_MEMORY)",
        "even one image does not fit",
    ] {
        assert!(error.contains(part), "{part}: {error}");
    }
    assert_eq!(by_name("batch_size=8").status, Status::Done);
    // Within the machine's memory it trains.
    let out = run(&home, &["submit", file.to_str().unwrap()]);
    assert!(out.status.success());
    assert_eq!(runs(&home).iter().filter(|r| r.status == Status::Done).count(), 2);
}

/// `pretrained = "imagenet"` without network access: the file is taken from
/// torch's cache (`TORCH_HOME`); `sweep eval` on the best checkpoint gives the
/// test numbers the run recorded; a model whose weights are nowhere fails with
/// a message saying where to put the file, and the sweep goes on.
#[test]
fn imagenet_weights_from_the_torch_cache_train_and_sweep_eval_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let torch = dir.path().join("torch");
    let hub = torch.join("hub/checkpoints");
    std::fs::create_dir_all(&hub).unwrap();
    let generated = crate::models::imagenet_like("resnet18", dir.path());
    std::fs::rename(generated, hub.join("resnet18-f37072fd.pth")).unwrap();
    let file = crate::write_sweep(
        dir.path(),
        "pre.toml",
        &crate::tiny_sweep(
            "pre",
            32,
            1,
            "[[run]]\nname = \"r18\"\nmodel = \"resnet18\"\npretrained = \"imagenet\"\n\
             [[run]]\nname = \"r34\"\nmodel = \"resnet34\"\npretrained = \"imagenet\"\n",
        ),
    );
    let env = |c: &mut Command| {
        c.env("TORCH_HOME", &torch)
            .env("SWEEP_CACHE", dir.path().join("cache"))
            .env("SWEEP_WEIGHTS_URL", "http://127.0.0.1:9");
    };
    let mut cmd = sweep(&home);
    env(&mut cmd);
    let out = cmd.args(["submit", file.to_str().unwrap(), "--device", "cpu"]).output().unwrap();
    let err = stderr(&out);
    eprintln!("{err}");
    assert_eq!(out.status.code(), Some(1), "one run fails");
    let rows = runs(&home);
    let r18 = rows.iter().find(|r| r.name == "r18").unwrap();
    let r34 = rows.iter().find(|r| r.name == "r34").unwrap();
    assert_eq!(r18.status, Status::Done);
    assert_eq!(r34.status, Status::Failed);
    let msg = r34.error.clone().unwrap_or_default();
    let dest = dir.path().join("cache/weights/resnet34-b627a593.pth");
    assert!(msg.contains("could not download https") || msg.contains("could not download http://127.0.0.1:9"), "{msg}");
    assert!(msg.contains(&format!("put it at {}", dest.display())), "{msg}");

    let e = epochs(&home, r18.id);
    let best = block(async {
        let s = Store::open(&home).await.unwrap();
        let c = s.checkpoints(r18.id).await.unwrap();
        s.close().await;
        c
    })
    .into_iter()
    .find(|c| c.kind == CheckpointKind::Best)
    .unwrap();
    let weights = home.join(&best.path);
    let out = run(
        &home,
        &["eval", "--model", "resnet18", "--weights", weights.to_str().unwrap(), "--sweep", file.to_str().unwrap()],
    );
    assert!(out.status.success());
    assert!(stdout(&out).contains("top-5"), "{}", stdout(&out));
    let out = run(
        &home,
        &[
            "eval",
            "--model",
            "resnet18",
            "--weights",
            weights.to_str().unwrap(),
            "--sweep",
            file.to_str().unwrap(),
            "--format",
            "json",
            "--device",
            "cpu",
        ],
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["images"], 40);
    assert!((v["top1"].as_f64().unwrap() - e[0].test_acc).abs() < 1e-9, "{v} vs {:?}", e[0]);
    assert!((v["loss"].as_f64().unwrap() - e[0].test_loss).abs() < 1e-5, "{v} vs {:?}", e[0]);
    assert!(v["top5"].as_f64().unwrap() >= v["top1"].as_f64().unwrap());
}

/// `keep = "best"`: a finished run keeps only its best checkpoint, and the
/// setting does not change the run's key (it cannot change the numbers).
#[test]
fn keep_best_leaves_one_checkpoint_per_finished_run() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let file = crate::write_sweep(dir.path(), "k.toml", &crate::tiny_sweep("k", 32, 2, "[[run]]\nkeep = \"best\"\n"));
    let out = run(&home, &["submit", file.to_str().unwrap(), "--device", "cpu"]);
    assert!(out.status.success());
    let rows = runs(&home);
    assert_eq!(rows.len(), 1);
    let ckpts = block(async {
        let s = Store::open(&home).await.unwrap();
        let c = s.checkpoints(rows[0].id).await.unwrap();
        s.close().await;
        c
    });
    assert_eq!(ckpts.len(), 1);
    assert_eq!(ckpts[0].kind, CheckpointKind::Best);
    let run_dir = home.join(Path::new(&ckpts[0].path).parent().unwrap());
    let mut files: Vec<String> =
        std::fs::read_dir(&run_dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    files.sort();
    let name = |p: &str| Path::new(p).file_name().unwrap().to_string_lossy().into_owned();
    let mut expected =
        vec!["config.json".to_owned(), "log.txt".to_owned(), name(&ckpts[0].path), name(&ckpts[0].state_path)];
    expected.sort();
    assert_eq!(files, expected);

    // The same run without `keep` is the same key: already done.
    let same = crate::write_sweep(dir.path(), "k2.toml", &crate::tiny_sweep("k2", 32, 2, "[[run]]\n"));
    let out = run(&home, &["submit", same.to_str().unwrap(), "--device", "cpu"]);
    assert!(out.status.success());
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(text.contains("1 already done"), "{text}");
}

/// An ImageFolder `.tar.gz` of PNGs of two sizes, named relative to the sweep
/// file: with the report's heavy augmentation (after a resize) it trains; with
/// no resize the run fails naming two images of different sizes, and the
/// other run still finishes.
#[test]
fn an_image_folder_archive_trains_with_the_heavy_augmentation() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let mut files = Vec::new();
    for split in ["train", "test"] {
        for (c, class) in ["circle", "square", "stripe"].iter().enumerate() {
            for i in 0..8u32 {
                let side = if i % 2 == 0 { 20 } else { 24 };
                files.push((
                    format!("pics/{split}/{class}/{i}.png"),
                    crate::data::png(side, side, c as u8 * 50 + i as u8),
                ));
            }
        }
    }
    std::fs::write(dir.path().join("pics.tar.gz"), crate::data::targz(&files, true)).unwrap();
    let text = r#"
name = "folder"
dataset = { folder = "pics.tar.gz" }
seed = 3

[defaults]
model = "smallcnn"
batch_size = 8
epochs = 1
drop_last = true
optimizer = { name = "adam", lr = 1e-3 }

[augment.heavy]
train = [
  { resize = { size = 16 } },
  { random_crop = { size = 16, padding = 2 } },
  { hflip = { p = 0.5 } },
  { rotation = { degrees = 10 } },
  { affine = { degrees = 0, shear = 10, scale = [0.8, 1.2] } },
  { color_jitter = { brightness = 0.2, contrast = 0.2, saturation = 0.2, hue = 0.05 } },
  { normalize = "cifar10" },
  { random_erasing = { p = 0.5 } },
]
test = [{ resize = { size = 16 } }, { normalize = "cifar10" }]

[augment.raw]
train = []
test = []

[[grid]]
augment = ["heavy", "raw"]
"#;
    let sweep_file = crate::write_sweep(dir.path(), "folder.toml", text);
    let out = run(&home, &["submit", sweep_file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "the raw run fails");
    let rows = runs(&home);
    let heavy = rows.iter().find(|r| r.name == "augment=heavy").unwrap();
    assert_eq!((heavy.status, heavy.epochs_done), (Status::Done, 1), "{heavy:?}");
    let e = epochs(&home, heavy.id);
    // 24 training images, batch 8, drop_last: 3 full batches; 24 test images.
    assert!(e[0].train_loss.is_finite() && e[0].test_acc >= 0.0);
    let raw = rows.iter().find(|r| r.name == "augment=raw").unwrap();
    let err = raw.error.as_deref().unwrap();
    assert_eq!(raw.status, Status::Failed);
    assert!(err.contains("pics.tar.gz/pics/t") && err.contains("20x20") && err.contains("24x24"), "{err}");
}

/// An image that does not decode fails the run with the file's path and the decoder's words on
/// one line (the decoder's message ends in a newline, which is not kept), and the run after it in
/// the queue still trains.
#[test]
fn an_image_that_does_not_decode_fails_its_run_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let (bad, good) = (dir.path().join("bad"), dir.path().join("good"));
    for root in [&bad, &good] {
        for split in ["train", "test"] {
            for (c, class) in ["a", "b"].iter().enumerate() {
                let d = root.join(format!("pics/{split}/{class}"));
                std::fs::create_dir_all(&d).unwrap();
                for i in 0..4u8 {
                    std::fs::write(d.join(format!("{i}.png")), crate::data::png(8, 8, c as u8 * 40 + i)).unwrap();
                }
            }
        }
    }
    std::fs::write(bad.join("pics/train/b/9.jpg"), b"\xff\xd8\xff\xe0 cut short").unwrap();
    let sweep_file = |name: &str, root: &Path| {
        let text = format!(
            "name = \"{name}\"\ndataset = {{ folder = \"{}\" }}\n\n[defaults]\nmodel = \"smallcnn\"\n\
             batch_size = 4\nepochs = 1\noptimizer = {{ name = \"sgd\", lr = 0.01 }}\n",
            root.join("pics").display()
        );
        crate::write_sweep(dir.path(), &format!("{name}.toml"), &text)
    };
    let (bad_file, good_file) = (sweep_file("bad", &bad), sweep_file("good", &good));
    assert!(run(&home, &["submit", "--queue-only", bad_file.to_str().unwrap()]).status.success());
    assert!(run(&home, &["submit", "--queue-only", good_file.to_str().unwrap()]).status.success());
    let out = run(&home, &["worker", "--exit-when-empty"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let rows = runs(&home);
    let failed = rows.iter().find(|r| r.status == Status::Failed).unwrap();
    let err = failed.error.as_deref().unwrap();
    assert!(err.contains("9.jpg") && err.contains("cannot decode the image"), "{err}");
    assert_eq!(err, err.trim_end(), "{err:?}");
    assert!(!stderr(&out).contains("\\n"), "{}", stderr(&out));
    assert_eq!(rows.iter().filter(|r| r.status == Status::Done).count(), 1, "{rows:?}");

    // `skip_unreadable`: the run trains without it, and its log names it.
    let text = std::fs::read_to_string(&bad_file).unwrap().replace("\" }", "\", skip_unreadable = true }");
    std::fs::write(&bad_file, text).unwrap();
    let out = run(&home, &["-q", "submit", bad_file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows = runs(&home);
    let skipped = rows.iter().find(|r| r.status == Status::Done && r.config_json.contains("skip_unreadable")).unwrap();
    let log = stdout(&run(&home, &["logs", &skipped.key]));
    assert!(log.contains("1 unreadable image(s) left out") && log.contains("train/b/9.jpg: cannot decode"), "{log}");
}

/// An image folder with train/, val/ and test/: a run validates on val/ (metric `val_acc`, no
/// `val_split`). A run that also sets `val_split`, or a val metric without a val/ folder, is
/// refused by `submit` at the dataset line (nothing queued; `plan` counts the images first);
/// queued anyway (`--queue-only`), the trainer fails such a run saying the same.
#[test]
fn an_image_folders_val_folder_is_the_validation_split() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let root = dir.path().join("pics");
    for (k, split) in ["train", "val", "test"].iter().enumerate() {
        for (c, class) in ["a", "b"].iter().enumerate() {
            let d = root.join(split).join(class);
            std::fs::create_dir_all(&d).unwrap();
            for i in 0..(6 - 2 * k.min(1)) as u8 {
                std::fs::write(d.join(format!("{i}.png")), crate::data::png(8, 8, c as u8 * 100 + i)).unwrap();
            }
        }
    }
    let text = format!(
        "name = \"v\"\nmetric = \"val_acc\"\ndataset = {{ folder = \"{}\" }}\n\n[defaults]\nmodel = \"smallcnn\"\n\
         batch_size = 4\nepochs = 2\noptimizer = {{ name = \"sgd\", lr = 0.01 }}\n\n[[run]]\nname = \"own\"\n\n\
         [[run]]\nname = \"both\"\nval_split = 0.25\n",
        root.display()
    );
    let f = crate::write_sweep(dir.path(), "v.toml", &text);
    let out = run(&home, &["plan", "--no-estimate", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("would refuse"), "{}", stderr(&out));
    let out = run(&home, &["submit", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("v.toml:3:1") && err.contains("validation folder of its own") && err.contains("run `both`"),
        "{err}"
    );
    assert!(err.contains("nothing was queued"), "{err}");

    let f = crate::write_sweep(dir.path(), "v.toml", &text.replace("val_split = 0.25\n", ""));
    let out = run(&home, &["plan", "--no-estimate", f.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let line = "dataset: 12 training, 8 test and 8 validation images (train/, test/, val/), 2 classes: a, b";
    assert!(stdout(&out).contains(line), "{}", stdout(&out));
    let out = run(&home, &["-q", "submit", f.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let own = runs(&home).into_iter().find(|r| r.name == "own").unwrap();
    assert_eq!(own.status, Status::Done, "{:?}", own.error);
    let e = epochs(&home, own.id);
    assert_eq!(e.len(), 2);
    // 8 validation images: accuracy in steps of 12.5%.
    assert!(e.iter().all(|r| r.val_acc.is_some_and(|a| (a / 12.5).fract() == 0.0) && r.val_loss.is_some()), "{e:?}");

    // Without val/: refused; queued anyway, its runs fail saying what is missing.
    std::fs::remove_dir_all(root.join("val")).unwrap();
    let home = dir.path().join("home2");
    let out = run(&home, &["submit", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("has no validation folder"), "{}", stderr(&out));
    let out = run(&home, &["-q", "submit", "--queue-only", f.to_str().unwrap()]);
    assert!(out.status.success() && stderr(&out).contains("warning:"), "{}", stderr(&out));
    let out = run(&home, &["-q", "worker", "--exit-when-empty"]);
    assert_eq!(out.status.code(), Some(1));
    let own = runs(&home).into_iter().find(|r| r.name == "own").unwrap();
    assert!(own.error.as_deref().unwrap().contains("needs a validation split"), "{:?}", own.error);
}

/// MNIST from torchvision's `root` (`MNIST/raw`, the files gzipped as downloaded) trains through
/// `submit` like CIFAR, its grey images as RGB at 28x28, with MNIST's class names in the report.
#[test]
fn mnist_trains_from_torchvisions_root_folder() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let raw = dir.path().join("data/MNIST/raw");
    std::fs::create_dir_all(&raw).unwrap();
    // Digit k: a bright k-th column on a dark image (the label is in the pixels).
    let images = |labels: &[u8]| {
        let mut px = vec![0u8; labels.len() * 784];
        for (i, &l) in labels.iter().enumerate() {
            for y in 0..28 {
                px[i * 784 + y * 28 + 2 + 2 * usize::from(l)] = 255;
            }
        }
        px
    };
    let train: Vec<u8> = (0..40).map(|i| i % 10).collect();
    let test: Vec<u8> = (0..10).collect();
    let n = |v: &[u8]| v.len() as u32;
    for (name, bytes) in [
        ("train-images-idx3-ubyte.gz", crate::data::idx_gz(&[n(&train), 28, 28], &images(&train))),
        ("train-labels-idx1-ubyte.gz", crate::data::idx_gz(&[n(&train)], &train)),
        ("t10k-images-idx3-ubyte.gz", crate::data::idx_gz(&[n(&test), 28, 28], &images(&test))),
        ("t10k-labels-idx1-ubyte.gz", crate::data::idx_gz(&[n(&test)], &test)),
    ] {
        std::fs::write(raw.join(name), bytes).unwrap();
    }
    let text = "name = \"digits\"\ndataset = { name = \"mnist\", path = \"data\" }\n\n[defaults]\n\
                model = \"smallcnn\"\nbatch_size = 8\nepochs = 1\naugment = \"n\"\n\
                optimizer = { name = \"sgd\", lr = 0.01 }\n\n[augment.n]\n\
                train = [{ normalize = \"mnist\" }]\ntest = [{ normalize = \"mnist\" }]\n\n[[run]]\nname = \"one\"\n";
    let f = crate::write_sweep(dir.path(), "digits.toml", text);
    let out = run(&home, &["-q", "submit", f.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let one = runs(&home).into_iter().find(|r| r.name == "one").unwrap();
    assert_eq!(one.status, Status::Done, "{:?}", one.error);
    let e = epochs(&home, one.id);
    // 10 test images: accuracy in steps of 10%.
    assert!(e.len() == 1 && (e[0].test_acc / 10.0).fract() == 0.0, "{e:?}");
    // `plan` says where the data is read from, or what a first run would download.
    let out = run(&home, &["plan", "--no-estimate", f.to_str().unwrap()]);
    let line = format!("dataset: mnist, read from {}", raw.display());
    assert!(stdout(&out).contains(&line), "{}", stdout(&out));
    let stl = crate::write_sweep(
        dir.path(),
        "stl.toml",
        &text.replace("name = \"mnist\", path = \"data\"", "name = \"stl10\""),
    );
    let cache = dir.path().join("cache");
    let out = sweep(&home)
        .args(["plan", "--no-estimate", "--format", "json", stl.to_str().unwrap()])
        .env("SWEEP_CACHE", &cache)
        .env("SWEEP_DATA_URL", "http://127.0.0.1:9")
        .output()
        .unwrap();
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let download = &plan["dataset"]["download"];
    assert_eq!((plan["dataset"]["name"].as_str(), plan["dataset"]["found"].is_null()), (Some("stl10"), true), "{plan}");
    assert_eq!(download["url"], "http://127.0.0.1:9/stl10_binary.tar.gz", "{plan}");
    assert_eq!(download["into"], cache.join("datasets").display().to_string(), "{plan}");

    // The per-class figure names MNIST's classes.
    let report = dir.path().join("report.html");
    let out = run(&home, &["report", "-o", report.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(std::fs::read_to_string(&report).unwrap().contains("7 - seven"));
}

/// A folder whose layout is wrong (here an empty class folder) is refused by `submit` at the
/// dataset line, before anything is queued or decoded.
#[test]
fn a_bad_folder_layout_is_refused_at_submit() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let root = dir.path().join("pics");
    for split in ["train", "test"] {
        for class in ["a", "b"] {
            std::fs::create_dir_all(root.join(split).join(class)).unwrap();
            std::fs::write(root.join(format!("{split}/{class}/0.png")), crate::data::png(8, 8, 1)).unwrap();
        }
    }
    std::fs::create_dir_all(root.join("test/c")).unwrap();
    let text = format!(
        "name = \"l\"\ndataset = {{ folder = \"{}\" }}\n[defaults]\nmodel = \"smallcnn\"\nbatch_size = 4\n\
         epochs = 1\noptimizer = {{ name = \"sgd\", lr = 0.01 }}\n",
        root.display()
    );
    let f = crate::write_sweep(dir.path(), "l.toml", &text);
    let out = run(&home, &["submit", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("l.toml:2:1") && err.contains("test/c: empty class folder"), "{err}");
    assert!(!home.join(sweep::store::DB_FILE).exists());
}

/// An image folder that does not exist here: `submit` (which would train it here) refuses the
/// file at the `dataset` line, `plan` warns and exits 1, and `--queue-only` queues it with a
/// warning, for workers that see the path (a node's scratch copy).
#[test]
fn a_dataset_folder_missing_here_is_refused_unless_only_queued() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let text = "name = \"gone\"\n\ndataset = { folder = \"pics\" }\n\n[defaults]\nmodel = \"smallcnn\"\n\
                batch_size = 4\nepochs = 1\noptimizer = { name = \"sgd\", lr = 0.01 }\n";
    let f = crate::write_sweep(dir.path(), "gone.toml", text);
    let missing = format!("`{}`: no such folder or archive on this machine", dir.path().join("pics").display());
    let out = run(&home, &["submit", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("gone.toml:3:1") && stderr(&out).contains(&missing), "{}", stderr(&out));
    assert!(stderr(&out).contains("nothing was queued"));
    assert!(!home.join(sweep::store::DB_FILE).exists());
    let out = run(&home, &["plan", "--no-estimate", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains(&missing) && stderr(&out).contains("would refuse"), "{}", stderr(&out));
    let out = run(&home, &["submit", "--queue-only", f.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("warning:") && stderr(&out).contains(&missing), "{}", stderr(&out));
    assert_eq!(runs(&home).iter().map(|r| r.status).collect::<Vec<_>>(), [Status::Queued]);
}

/// A file that asks for a GPU this build cannot use is refused before anything
/// is queued; `--device cpu` overrides the file and the run records its CPU.
#[cfg(not(feature = "cuda"))]
#[test]
fn a_gpu_device_without_cuda_is_refused_and_the_command_line_wins() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let text = crate::tiny_sweep("gpu", 32, 1, "").replace("seed = 1\n", "seed = 1\ndevice = \"cuda:0\"\n");
    let f = crate::write_sweep(dir.path(), "gpu.toml", &text);
    let out = run(&home, &["submit", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("built without CUDA") && stderr(&out).contains("nothing was queued"));
    assert!(!home.join(sweep::store::DB_FILE).exists());
    let out = run(&home, &["-q", "submit", f.to_str().unwrap(), "--device", "cpu"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows = runs(&home);
    assert_eq!(rows.len(), 1);
    assert!(rows[0].device.as_deref().is_some_and(|d| d.starts_with("cpu (")), "{:?}", rows[0].device);
}

#[test]
fn an_unknown_device_is_refused_before_anything_is_queued() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let f = crate::write_sweep(dir.path(), "dev.toml", &crate::tiny_sweep("dev", 32, 1, ""));
    // On the command line, in the environment, and with --queue-only: refused by
    // the argument parser, with the accepted forms, before the database exists.
    for (args, env) in [
        (vec!["submit", f.to_str().unwrap(), "--device", "gpu"], None),
        (vec!["submit", f.to_str().unwrap(), "--queue-only", "--device", "cuda"], None),
        (vec!["submit", f.to_str().unwrap()], Some("gpu")),
        (vec!["worker", "--device", "cuda:x"], None),
    ] {
        let mut c = sweep(&home);
        c.args(&args);
        if let Some(v) = env {
            c.env(sweep::env::DEVICE.name, v);
        }
        let out = c.output().unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("unknown device") && err.contains("use cpu, auto or cuda:N"), "{args:?}: {err}");
        assert!(!home.join(sweep::store::DB_FILE).exists(), "{args:?} created the database");
    }
    // The sweep file's own `device` is checked at its line.
    let text = crate::tiny_sweep("dev", 32, 1, "").replace("seed = 1\n", "seed = 1\ndevice = \"gpu\"\n");
    let f = crate::write_sweep(dir.path(), "dev2.toml", &text);
    let out = run(&home, &["submit", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("dev2.toml:6:10: `device`: unknown device `gpu`"), "{}", stderr(&out));
    assert!(!home.join(sweep::store::DB_FILE).exists());
}

#[test]
fn the_help_lists_every_environment_variable() {
    let out = run(Path::new("unused"), &["--help"]);
    assert!(out.status.success());
    let help = stdout(&out);
    for v in sweep::env::ALL {
        assert!(help.contains(v.name), "{} missing from --help:\n{help}", v.name);
    }
}

/// SIGTERM (docker stop, Kubernetes, systemd), SIGUSR1 (Slurm's `--signal`) and
/// SIGHUP stop a worker as Ctrl-C does: the batch finishes, a mid-epoch
/// checkpoint is saved, the run is interrupted, the exit code is 128 + the
/// signal, and the resumed run gives the uninterrupted run's numbers.
#[test]
#[allow(unsafe_code)] // kill(2) on our own child: see the SAFETY comment
fn sigterm_sigusr1_and_sighup_stop_gracefully_and_resume_to_the_same_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let file = crate::write_sweep(dir.path(), "sig.toml", &crate::tiny_sweep("sig", 480, 2, ""));
    let f = file.to_str().unwrap();
    let base = dir.path().join("base");
    assert!(run(&base, &["-q", "submit", f]).status.success());
    let reference = numbers(&epochs(&base, runs(&base)[0].id));
    for (signal, code) in [(libc::SIGTERM, 143), (libc::SIGUSR1, 138), (libc::SIGHUP, 129)] {
        let home = dir.path().join(format!("sig{signal}"));
        assert!(run(&home, &["submit", "--queue-only", f]).status.success());
        let mut child = sweep(&home).args(["-q", "worker"]).stderr(Stdio::piped()).spawn().unwrap();
        wait_until(&mut child, &home, "the middle of epoch 1", |r| r[0].step >= 3);
        // SAFETY: sending a signal to our own child process.
        assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "signal {signal}: {err}");
        assert!(err.contains("stopping after the current batch"), "{err}");
        let rows = runs(&home);
        assert_eq!(rows[0].status, Status::Interrupted, "signal {signal}");
        let ck = block(async { Store::open(&home).await.unwrap().checkpoints(rows[0].id).await.unwrap() });
        // Saved where it stopped: at least the 3 batches seen before the signal.
        let latest = ck.iter().find(|c| c.kind == CheckpointKind::Latest).expect("a latest checkpoint");
        assert!(latest.epoch >= 1 || latest.step >= 3, "{latest:?}");
        assert!(run(&home, &["-q", "worker"]).status.success());
        assert_eq!(numbers(&epochs(&home, rows[0].id)), reference, "resumed after signal {signal}");
    }
}

/// A run that aborts its worker (here: a head whose weight cannot be
/// allocated) sits in front of three good runs. Each new worker resumes it
/// first and dies; after the third death it is failed with where it was last
/// seen, and the good runs train.
#[test]
fn a_run_that_kills_its_worker_three_times_is_failed_and_the_queue_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let extra = "[[run]]\nname = \"poison\"\nhead = { hidden = [8], dropout = [0.0] }\n\
                 [[grid]]\noptimizer.lr = [0.05, 0.02, 0.01]\n";
    let f = crate::write_sweep(dir.path(), "p.toml", &crate::tiny_sweep("p", 32, 1, extra));
    let home = dir.path().join("home");
    // What slips past validation (here: written into the queue directly, as by
    // an older version): a head whose weight cannot be allocated.
    let mut spec = sweep::spec::load(&f).unwrap();
    let at = spec.runs.iter().position(|r| r.name == "poison").unwrap();
    let mut poison = spec.runs.remove(at);
    poison.config.head = sweep::spec::Head::Mlp { hidden: vec![100_000_000_000], dropout: vec![0.0] };
    spec.runs.insert(0, poison);
    block(async {
        let s = Store::open(&home).await.unwrap();
        s.submit(&spec).await.unwrap();
        s.close().await;
    });
    let mut ends = Vec::new();
    for _ in 0..6 {
        let out = sweep(&home).args(["-q", "worker"]).env("RUST_BACKTRACE", "0").output().unwrap();
        let end = (out.status.code(), std::os::unix::process::ExitStatusExt::signal(&out.status));
        ends.push(end);
        if end.0.is_some() {
            break;
        }
    }
    // Three aborts (the poison is claimed first each time), then a worker that
    // fails it, trains the three good runs and says a run failed.
    let abort = (None, Some(libc::SIGABRT));
    assert_eq!(ends, [abort, abort, abort, (Some(1), None)]);
    let rows = runs(&home);
    let poison = rows.iter().find(|r| r.name == "poison").unwrap();
    assert_eq!(poison.status, Status::Failed);
    let err = poison.error.as_deref().unwrap_or_default();
    assert!(err.starts_with("killed its worker 3 times; last seen at epoch 1 batch 0"), "{err}");
    assert!(rows.iter().filter(|r| r.name != "poison").all(|r| r.status == Status::Done), "{rows:?}");
    // Submitting again queues it once more, with a fresh count.
    let again = block(async { Store::open(&home).await.unwrap().submit(&spec).await.unwrap() });
    assert_eq!(again.iter().filter(|o| **o == sweep::store::SubmitOutcome::Requeued).count(), 1);
}

/// A worker that finds a run held by a worker that has gone silent (another
/// host's container, replaced) waits until the run is stale and takes it over,
/// instead of ending with work left.
#[test]
fn a_run_held_by_a_silent_worker_on_another_host_is_waited_for_and_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let f = crate::write_sweep(dir.path(), "s.toml", &crate::tiny_sweep("s", 32, 1, ""));
    let home = dir.path().join("home");
    assert!(run(&home, &["-q", "submit", "--queue-only", f.to_str().unwrap()]).status.success());
    block(async {
        let s = Store::open(&home).await.unwrap();
        s.claim_next("another-host:1", "cpu").await.unwrap().unwrap();
        s.close().await;
    });
    let start = Instant::now();
    let out = sweep(&home).args(["worker"]).env("SWEEP_STALE_SECS", "2").output().unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("waiting for run") && err.contains("another-host:1"), "{err}");
    assert!(err.contains("1 run(s) handled: 1 done") && err.contains("1 abandoned run(s) recovered"), "{err}");
    assert!(start.elapsed() >= Duration::from_secs(2), "taken over before it was stale");
    assert_eq!(runs(&home)[0].status, Status::Done);
}

/// Names, descriptions and references with ANSI and OSC escapes, carriage
/// returns and newlines reach no terminal raw, split no table row, and leave
/// every SVG and the HTML report valid XML text.
#[test]
fn hostile_text_is_shown_escaped_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let evil = r"\u001b[31mred\u001b]0;pwned\u0007\r\nrow";
    let text = crate::tiny_sweep(
        "hostile",
        32,
        1,
        &format!("[[run]]\nname = \"{evil}\"\nreference = {{ test_acc = 50.0, source = \"{evil}\" }}\n"),
    )
    .replace("name = \"hostile\"", &format!("name = \"hostile\"\ndescription = \"{evil}\""));
    let f = crate::write_sweep(dir.path(), "h.toml", &text);
    let f = f.to_str().unwrap();
    let home = dir.path().join("home");
    let bad = |s: &str| s.chars().any(|c| c.is_control() && c != '\n');
    let out = run(&home, &["plan", f]);
    assert!(out.status.success() && !bad(&stdout(&out)), "{}", stdout(&out));
    assert!(stdout(&out).contains(r"\x1b[31mred\x1b]0;pwned\x07\r\nrow"), "{}", stdout(&out));
    let out = run(&home, &["-q", "submit", f]);
    assert!(out.status.success() && !bad(&stdout(&out)) && !bad(&stderr(&out)), "{}", stdout(&out));
    for args in [
        vec!["status"],
        vec!["results"],
        vec!["show", "hostile/\u{1b}[31mred\u{1b}]0;pwned\u{7}\r\nrow"],
        vec!["report", "--format", "md"],
        vec!["report", "--format", "csv"],
    ] {
        let out = run(&home, &args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        let text = stdout(&out);
        assert!(!bad(&text), "{args:?} printed a control character:\n{text:?}");
        // Every row of a table is one line: the name's newline did not split it.
        let lines = match args[0] {
            "status" => 4,
            "results" => 3,
            _ => 0,
        };
        if lines > 0 {
            assert_eq!(text.lines().count(), lines, "{args:?}:\n{text}");
        }
    }
    let md = dir.path().join("r.md");
    assert!(run(&home, &["report", "--format", "md", "-o", md.to_str().unwrap()]).status.success());
    let html = dir.path().join("r.html");
    assert!(run(&home, &["report", "--format", "html", "-o", html.to_str().unwrap()]).status.success());
    let xml_invalid = |s: &str| s.chars().any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'));
    let mut svgs = 0;
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "svg" || e == "html") {
            let text = std::fs::read_to_string(&p).unwrap();
            assert!(!xml_invalid(&text), "{} holds a character XML does not allow", p.display());
            svgs += 1;
        }
    }
    assert!(svgs >= 3, "{svgs} files checked");
}

/// A full disk fails the run that hit it, says so and where, leaves no
/// temporary file, and stops the worker with the rest of the queue intact.
/// Runs in a private mount namespace on a 3 MB tmpfs (needs root: skipped
/// elsewhere, with a note).
#[test]
fn a_full_disk_fails_one_run_and_stops_the_worker_with_the_queue_intact() {
    let dir = tempfile::tempdir().unwrap();
    let extra = "[[grid]]\noptimizer.lr = [0.1, 0.05, 0.02]\n";
    let text = crate::tiny_sweep("full", 32, 1, extra)
        .replace("model = \"smallcnn\"", "model = \"resnet18\"\nstem = \"cifar\"");
    let f = crate::write_sweep(dir.path(), "full.toml", &text);
    let mnt = dir.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let bin = env!("CARGO_BIN_EXE_sweep");
    let script = format!(
        "mount -t tmpfs -o size=3m tmpfs {m} || exit 77; {bin} --home {m}/h -q submit {f}; echo \"rc=$?\"; \
         {bin} --home {m}/h status; find {m}/h/runs -type f",
        m = mnt.display(),
        f = f.display()
    );
    let out = Command::new("unshare").args(["--mount", "sh", "-c", &script]).env("RUST_LOG", "warn").output();
    let Some(out) = out.ok().filter(|o| o.status.code() != Some(77) && o.status.success()) else {
        eprintln!("skipped: a private tmpfs could not be mounted (needs root and unshare)");
        return;
    };
    let (text, err) = (stdout(&out), stderr(&out));
    assert!(text.contains("rc=1"), "{text}\n{err}");
    assert!(err.contains("stopped: the disk holding") && err.contains("is full"), "{err}");
    assert!(text.contains("2 queued, 0 running, 0 done, 1 failed"), "{text}");
    assert!(text.contains("the disk is full: cannot write"), "{text}");
    assert!(!text.contains(".tmp\n"), "a temporary file was left behind:\n{text}");
}

/// `submit` while a worker of this machine trains on the same device queues
/// the runs for that worker instead of starting a second one beside it; the
/// worker trains them after its own.
#[test]
fn submit_hands_its_runs_to_the_worker_already_training_here() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let slow = crate::write_sweep(dir.path(), "slow.toml", &crate::tiny_sweep("slow", 512, 4, ""));
    let quick = crate::write_sweep(dir.path(), "quick.toml", &crate::tiny_sweep("quick", 32, 1, ""));
    assert!(run(&home, &["-q", "submit", "--queue-only", slow.to_str().unwrap()]).status.success());
    let mut child = sweep(&home).args(["-q", "worker", "--device", "cpu"]).stderr(Stdio::piped()).spawn().unwrap();
    wait_until(&mut child, &home, "the slow run to start", |r| r[0].status == Status::Running);
    let out = run(&home, &["submit", "--device", "cpu", quick.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(&format!("queued for the worker already training on this machine (pid {}", child.id())),
        "{text}"
    );
    let out = run(&home, &["submit", "--device", "cpu", "--format", "json", quick.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert!(v["handed_to"].as_str().unwrap().ends_with(&format!(":{}", child.id())), "{v}");
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows = runs(&home);
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r.status == Status::Done && r.attempts == 1), "{rows:?}");
}

/// An artifact store that fails under a run (here a shared folder whose
/// `runs` is a file: the worker's check at the store's root passes, the
/// checkpoint cannot be written) is not the run's doing: the run goes back to
/// `interrupted`, the worker stops with the rest of the queue as it is, and
/// once the store is fixed the next worker trains both. A plain-HTTP S3
/// endpoint without AWS_ALLOW_HTTP is refused up front, saying so.
#[test]
fn a_failing_artifact_store_interrupts_the_run_and_stops_the_worker() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("runs"), b"not a folder").unwrap();
    let f = crate::write_sweep(
        dir.path(),
        "a.toml",
        &crate::tiny_sweep("a", 32, 2, "[[grid]]\noptimizer.lr = [0.1, 0.05]\n"),
    );
    let artifacts = ["--artifacts", shared.to_str().unwrap()];
    let out = sweep(&home).args(artifacts).args(["-q", "submit", f.to_str().unwrap()]).output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("stopped: the artifact store {} failed (keeping the checkpoint in", shared.display())),
        "{err}"
    );
    assert!(err.contains("resumes `lr=0.1` from its last recorded checkpoint and goes on with the queue"), "{err}");
    let rows = runs(&home);
    let status: Vec<_> = rows.iter().map(|r| r.status).collect();
    assert_eq!(status, [Status::Interrupted, Status::Queued], "{rows:?}");
    assert!(epochs(&home, rows[0].id).is_empty(), "an epoch recorded without its checkpoint kept");
    let log = std::fs::read_to_string(home.join(sweep::worker::run_dir(&rows[0].key)).join("log.txt")).unwrap();
    assert!(log.contains("the artifact store failed: keeping the checkpoint in"), "{log}");
    // Fixed: the interrupted run and the queued one are trained.
    std::fs::remove_file(shared.join("runs")).unwrap();
    let out = sweep(&home).args(artifacts).args(["-q", "worker"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(runs(&home).iter().all(|r| r.status == Status::Done));

    let out = sweep(&home)
        .args(["--artifacts", "s3://b/p", "worker"])
        .env("AWS_ENDPOINT", "http://127.0.0.1:9")
        .env_remove("AWS_ALLOW_HTTP")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("is plain HTTP: set AWS_ALLOW_HTTP=true"), "{}", stderr(&out));
}

/// A database error is said once, in one line.
#[test]
fn a_database_error_is_printed_once() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("sweep.db"), "this is not sqlite, just some text that is long enough").unwrap();
    let out = run(dir.path(), &["status"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(err.matches("file is not a database").count(), 1, "{err}");
}

/// A run whose latest checkpoint is gone fails with the way out, and
/// `sweep retry --from-scratch` trains it again from epoch 1.
#[test]
fn a_missing_checkpoint_names_the_way_out_and_retry_from_scratch_takes_it() {
    let dir = tempfile::tempdir().unwrap();
    let f = crate::write_sweep(dir.path(), "r.toml", &crate::tiny_sweep("r", 320, 2, ""));
    let home = dir.path().join("home");
    assert!(run(&home, &["-q", "submit", "--queue-only", f.to_str().unwrap()]).status.success());
    let mut child = sweep(&home).args(["-q", "worker"]).stderr(Stdio::null()).spawn().unwrap();
    wait_until(&mut child, &home, "epoch 1", |r| r[0].epochs_done >= 1);
    child.kill().unwrap();
    child.wait().unwrap();
    let first = runs(&home).remove(0);
    let id = first.key[..10].to_owned();
    let ck = block(async { Store::open(&home).await.unwrap().checkpoints(first.id).await.unwrap() });
    let latest = ck.iter().find(|c| c.kind == CheckpointKind::Latest).unwrap();
    std::fs::remove_file(home.join(&latest.path)).unwrap();
    let out = run(&home, &["-q", "worker"]);
    assert_eq!(out.status.code(), Some(1));
    let err = runs(&home)[0].error.clone().unwrap_or_default();
    assert!(err.contains("the checkpoint file is missing"), "{err}");
    assert!(err.contains(&format!("`sweep retry {id} --from-scratch` trains it again from epoch 1")), "{err}");
    // A failed run is retried; a finished one only from scratch.
    let out = run(&home, &["retry", &id, "--from-scratch"]);
    assert!(out.status.success() && stdout(&out).contains("failed -> queued, from scratch"), "{}", stdout(&out));
    assert!(epochs(&home, runs(&home)[0].id).is_empty());
    assert!(run(&home, &["-q", "worker"]).status.success());
    let rows = runs(&home);
    assert_eq!((rows[0].status, rows[0].epochs_done), (Status::Done, 2));
    assert_eq!(epochs(&home, rows[0].id).len(), 2);
    let out = run(&home, &["retry", &id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("it is done: it is finished; --from-scratch trains it again"), "{}", stderr(&out));
    let out = run(&home, &["retry", "--failed"]);
    assert!(out.status.success() && stdout(&out).contains("no failed or diverged run"), "{}", stdout(&out));
}

#[test]
fn set_overrides_on_plan_and_submit() {
    let dir = tempfile::tempdir().unwrap();
    let f = crate::write_sweep(dir.path(), "o.toml", &crate::tiny_sweep("o", 32, 1, ""));
    let home = dir.path().join("home");
    let out = run(&home, &["plan", f.to_str().unwrap(), "--set", "optimizer.lr=0.05,0.02", "--set", "batch_size=8"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("2 run(s)") && stdout(&out).contains("default,lr=0.02"), "{}", stdout(&out));
    let out = run(&home, &["submit", "--queue-only", f.to_str().unwrap(), "--set", "epochs=0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--set epochs=0: `epochs`: run `default`: must be at least 1"), "{}", stderr(&out));
    let out = run(&home, &["plan", f.to_str().unwrap(), "--set", "lr"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--set lr: expected KEY=VALUE"), "{}", stderr(&out));
}

/// `status` gives a running run's ETA from its finished epochs' pace, takes
/// `--sweep`, and `--watch` ends once nothing is queued or running.
#[test]
fn status_shows_the_eta_filters_by_sweep_and_watch_ends_with_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let f = crate::write_sweep(dir.path(), "e.toml", &crate::tiny_sweep("e", 32, 3, ""));
    assert!(run(&home, &["-q", "submit", "--queue-only", f.to_str().unwrap()]).status.success());
    let me = sweep::store::worker_id();
    let rec = EpochRecord {
        epoch: 1,
        train_loss: 1.0,
        train_acc: 50.0,
        test_loss: 1.0,
        test_acc: 50.0,
        test_top5: None,
        val_loss: None,
        val_acc: None,
        confusion: None,
        lr: 0.1,
        seconds: 2.0,
        images_per_sec: 16.0,
        peak_memory_bytes: None,
    };
    let ck = sweep::record::CheckpointRecord {
        kind: CheckpointKind::Latest,
        epoch: 1,
        step: 0,
        path: "runs/x/e1.safetensors".into(),
        sha256: "00".into(),
        state_path: "runs/x/e1.state.safetensors".into(),
        state_sha256: "11".into(),
        metric: Some(50.0),
    };
    let lease = block(async {
        let s = Store::open(&home).await.unwrap();
        let r = s.claim_next(&me, "cpu").await.unwrap().unwrap();
        s.record_epoch(&r.lease(), &rec, &ck, None).await.unwrap();
        s.heartbeat(&r.lease(), 2, 4).await.unwrap();
        r.lease()
    });
    // 1.5 epochs left at 2 s an epoch.
    let out = run(&home, &["status", "--sweep", "e"]);
    let line = stdout(&out).lines().find(|l| l.contains(" running ")).unwrap_or_default().to_owned();
    assert!(line.contains("2/4") && line.trim_end().ends_with(" 3.0s"), "{}", stdout(&out));
    // A worker silent for longer than SWEEP_STALE_SECS may be gone: said.
    let out = sweep(&home).args(["status"]).env("SWEEP_STALE_SECS", "0").output().unwrap();
    let line = stdout(&out).lines().find(|l| l.contains(" running ")).unwrap_or_default().to_owned();
    assert!(line.contains(" ago, silent "), "{}", stdout(&out));
    assert!(stdout(&out).contains("1 running run(s) silent: no heartbeat for over 0.0s"), "{}", stdout(&out));
    let out = sweep(&home).args(["status", "--format", "json"]).env("SWEEP_STALE_SECS", "0").output().unwrap();
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["silent"].as_array().map(Vec::len), Some(1), "{v}");
    assert!(!stdout(&run(&home, &["status"])).contains("silent"));
    let out = run(&home, &["status", "--sweep", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no sweep named `nope` (known: e)"), "{}", stderr(&out));
    block(async { Store::open(&home).await.unwrap().finish(&lease, Status::Done, None).await.unwrap() });
    let out = sweep(&home).args(["status", "--watch"]).output().unwrap();
    assert!(out.status.success() && stdout(&out).starts_with("0 queued, 0 running, 1 done"), "{}", stdout(&out));
}

/// `sweep eval` on a checkpoint sweep wrote applies that run's test
/// transforms and dataset (its config.json) and says so: it scores what the
/// run recorded. Without them (`--augment none`) a normalised run scores otherwise.
#[test]
fn eval_of_a_sweep_checkpoint_uses_the_runs_own_test_transforms() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let text = crate::tiny_sweep("ev", 96, 1, "")
        .replace("test = []", "test = [{ normalize = { mean = [0.9, 0.9, 0.9], std = [0.05, 0.05, 0.05] } }]")
        .replace("train = [", "train = [{ normalize = { mean = [0.9, 0.9, 0.9], std = [0.05, 0.05, 0.05] } }, ");
    let file = crate::write_sweep(dir.path(), "ev.toml", &text);
    assert!(run(&home, &["-q", "submit", file.to_str().unwrap()]).status.success());
    let r = &runs(&home)[0];
    let ck = block(async { Store::open(&home).await.unwrap().checkpoints(r.id).await.unwrap() });
    let best = home.join(&ck.iter().find(|c| c.kind == CheckpointKind::Best).unwrap().path);
    let recorded = epochs(&home, r.id)[0].test_acc;
    let out = run(&home, &["eval", "--device", "cpu", "--format", "json", "--weights", best.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert!((v["top1"].as_f64().unwrap() - recorded).abs() < 1e-9, "{v} vs recorded {recorded}");
    assert_eq!(v["transforms"], "normalize");
    assert!(v["transforms_from"].as_str().unwrap().contains("config.json"), "{v}");
    let out = run(&home, &["eval", "--weights", best.to_str().unwrap(), "--model", "resnet18"]);
    assert!(stderr(&out).contains("says the run trained smallcnn"), "{}", stderr(&out));
    let other = run(
        &home,
        &["eval", "--format", "json", "--weights", best.to_str().unwrap(), "--model", "smallcnn", "--augment", "none"],
    );
    let w: serde_json::Value = serde_json::from_str(&stdout(&other)).unwrap();
    assert_eq!(w["transforms"], "none");
    assert_ne!(w["loss"], v["loss"], "no normalisation gives other numbers");
    // A mistyped path says so (not "give --model").
    let missing = dir.path().join("nope.pth");
    let out = run(&home, &["eval", "--model", "smallcnn", "--weights", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains(&format!("--weights {}: no such file", missing.display())), "{}", stderr(&out));
}

/// The README's own example sweep file trains (here on fewer generated
/// images, one epoch): every run done.
#[test]
fn the_readme_example_sweep_trains() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let block = &readme[readme.find("## The sweep file").unwrap()..];
    let body = &block[block.find("```toml\n").unwrap() + 8..];
    let toml = body[..body.find("```").unwrap()]
        .replace("train_size = 1600, test_size = 500", "train_size = 64, test_size = 32");
    let dir = tempfile::tempdir().unwrap();
    let file = crate::write_sweep(dir.path(), "lr.toml", &toml);
    let home = dir.path().join("home");
    let out = run(&home, &["-q", "submit", "--set", "epochs=1", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows = runs(&home);
    assert_eq!(rows.len(), 12);
    assert!(
        rows.iter().all(|r| r.status == Status::Done),
        "{:?}",
        rows.iter().map(|r| (&r.name, r.status, &r.error)).collect::<Vec<_>>()
    );
}

/// Every error of a sweep file in one pass: an unknown field, a wrong type
/// and an unknown model, each at its line.
#[test]
fn every_error_of_a_sweep_file_is_reported_in_one_pass() {
    let dir = tempfile::tempdir().unwrap();
    let text = "name = \"bad\"\ndataset = \"synthetic\"\nmetric = \"test_acc\"\nlearning_rate = 3\n[defaults]\n\
                model = \"smallcnn\"\naugment = \"none\"\nepochs = 2\noptimizer = { name = \"sgd\", lr = 0.1 }\n\
                [[grid]]\nbatch_size = [\"x\", 16]\n[[run]]\nname = \"typo\"\nmodel = \"resnet19\"\nbatch_size = 8\n";
    let f = crate::write_sweep(dir.path(), "bad.toml", text);
    let home = dir.path().join("home");
    for cmd in ["plan", "submit"] {
        let out = run(&home, &[cmd, f.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2));
        let err = stderr(&out);
        assert!(err.contains("bad.toml:4:1: unknown field `learning_rate`"), "{err}");
        assert!(err.contains("bad.toml:11:1: `batch_size`: value \"x\": invalid type"), "{err}");
        assert!(err.contains("bad.toml:12:1: run `typo`: model `resnet19` is not available"), "{err}");
    }
    assert!(!home.join("sweep.db").exists(), "nothing was queued");
}

/// An image folder edited while one of its runs was interrupted: resuming
/// would train the run's later epochs on other data, so the run fails saying
/// so (and how to start it over) instead; retried from scratch it trains.
#[test]
#[allow(unsafe_code)] // kill(2) on our own child: see the SAFETY comment
fn a_run_resumed_after_its_dataset_changed_fails_instead_of_mixing_two_datasets() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let root = dir.path().join("pics");
    for split in ["train", "test"] {
        for (c, class) in ["a", "b"].iter().enumerate() {
            let d = root.join(format!("{split}/{class}"));
            std::fs::create_dir_all(&d).unwrap();
            for i in 0..40u8 {
                std::fs::write(d.join(format!("{i}.png")), crate::data::png(32, 32, c as u8 * 90 + i)).unwrap();
            }
        }
    }
    let text = format!(
        "name = \"edit\"\ndataset = {{ folder = \"{}\" }}\n\n[defaults]\nmodel = \"smallcnn\"\n\
         batch_size = 4\nepochs = 30\noptimizer = {{ name = \"sgd\", lr = 0.01 }}\n",
        root.display()
    );
    let f = crate::write_sweep(dir.path(), "edit.toml", &text);
    assert!(run(&home, &["submit", "--queue-only", f.to_str().unwrap()]).status.success());
    let mut child = sweep(&home).args(["-q", "worker"]).stderr(Stdio::piped()).spawn().unwrap();
    wait_until(&mut child, &home, "epoch 1", |r| r[0].epochs_done >= 1);
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(143), "{}", String::from_utf8_lossy(&out.stderr));
    let before = runs(&home)[0].clone();
    assert_eq!(before.status, Status::Interrupted);

    // Touched but not changed: the same data, so the run resumes.
    let img = root.join("train/b/7.png");
    let bytes = std::fs::read(&img).unwrap();
    std::fs::write(&img, &bytes).unwrap();
    let mut child = sweep(&home).args(["-q", "worker"]).stderr(Stdio::piped()).spawn().unwrap();
    wait_until(&mut child, &home, "the resumed run's next epoch", |r| r[0].epochs_done > before.epochs_done);
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    assert_eq!(child.wait().unwrap().code(), Some(143));
    let resumed = runs(&home)[0].clone();
    assert_eq!((resumed.status, resumed.attempts), (Status::Interrupted, 2));

    // One image edited: the run is failed, its epochs kept as they were.
    std::fs::write(&img, crate::data::png(32, 32, 200)).unwrap();
    let out = run(&home, &["worker"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let failed = runs(&home)[0].clone();
    let err = failed.error.as_deref().unwrap_or_default();
    assert_eq!(failed.status, Status::Failed, "{failed:?}");
    assert!(err.contains("the dataset changed since this run started"), "{err}");
    assert!(err.contains(&format!("`sweep retry {} --from-scratch`", &failed.key[..10])), "{err}");
    assert_eq!(failed.epochs_done, resumed.epochs_done, "nothing trained on the new data");
    assert!(stderr(&out).contains("the dataset changed"), "{}", stderr(&out));

    // Started over, it trains on the data as it is now.
    let out = run(&home, &["retry", &failed.key[..10], "--from-scratch"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut child = sweep(&home).args(["-q", "worker"]).stderr(Stdio::piped()).spawn().unwrap();
    wait_until(&mut child, &home, "epoch 1 on the new data", |r| r[0].epochs_done >= 1 && r[0].attempts == 4);
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    assert_eq!(child.wait().unwrap().code(), Some(143));
    assert_eq!(runs(&home)[0].status, Status::Interrupted);
}
