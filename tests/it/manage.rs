//! Managing the queue from the command line: cancel, logs, rm, prune, --rerun.

use crate::cli::{block, epochs, numbers, run, runs, stderr, stdout, sweep, wait_until};
use std::process::Stdio;
use sweep::store::{Status, Store};

fn by_name<'a>(rows: &'a [sweep::store::RunRow], name: &str) -> &'a sweep::store::RunRow {
    rows.iter().find(|r| r.name == name).unwrap_or_else(|| panic!("no run {name}"))
}

/// A queued run is cancelled at once; a running one stops after its batch,
/// checkpointed, while the worker goes on with the queue; retried, it resumes
/// to the numbers of an uninterrupted run. Its log tells the whole story and
/// `logs -f` ends with the run.
#[test]
fn cancel_stops_one_run_the_worker_goes_on_and_retry_resumes_it_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let grid = "[[grid]]\noptimizer.lr = [0.05, 0.1]\n";
    let file = crate::write_sweep(dir.path(), "c.toml", &crate::tiny_sweep("c", 480, 2, grid));
    let f = file.to_str().unwrap();
    let base = dir.path().join("base");
    assert!(run(&base, &["-q", "submit", f]).status.success());
    let reference = numbers(&epochs(&base, by_name(&runs(&base), "lr=0.05").id));

    let home = dir.path().join("home");
    assert!(run(&home, &["submit", "--queue-only", f]).status.success());
    let out = run(&home, &["cancel", "c/lr=0.1"]);
    assert!(out.status.success());
    assert!(stdout(&out).contains("queued -> cancelled"), "{}", stdout(&out));
    let out = run(&home, &["cancel", "c/lr=0.1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("it is cancelled already"), "{}", stderr(&out));

    let mut child = sweep(&home).args(["worker"]).stderr(Stdio::piped()).spawn().unwrap();
    wait_until(&mut child, &home, "the middle of epoch 1", |r| by_name(r, "lr=0.05").step >= 3);
    let follower = sweep(&home).args(["logs", "-f", "lr=0.05"]).stdout(Stdio::piped()).spawn().unwrap();
    let out = run(&home, &["cancel", "lr=0.05"]);
    assert!(stdout(&out).contains("running -> stops after its current batch"), "{}", stdout(&out));
    let worker = child.wait_with_output().unwrap();
    // The worker went on (nothing else is queued) and ended normally.
    assert!(worker.status.success(), "{}", String::from_utf8_lossy(&worker.stderr));
    let followed = String::from_utf8_lossy(&follower.wait_with_output().unwrap().stdout).into_owned();
    let rows = runs(&home);
    let cancelled = by_name(&rows, "lr=0.05");
    assert_eq!(cancelled.status, Status::Cancelled);
    assert_eq!(by_name(&rows, "lr=0.1").status, Status::Cancelled);
    let ck = block(async { Store::open(&home).await.unwrap().checkpoints(cancelled.id).await.unwrap() });
    assert!(!ck.is_empty(), "a cancelled running run keeps a checkpoint");
    assert!(followed.contains("cancel requested"), "{followed}");
    assert!(followed.trim_end().ends_with("cancelled"), "logs -f ends with the run: {followed}");

    assert!(run(&home, &["retry", "lr=0.05"]).status.success());
    assert!(run(&home, &["-q", "worker"]).status.success());
    assert_eq!(numbers(&epochs(&home, cancelled.id)), reference, "resumed after cancel");
    let log = stdout(&run(&home, &["logs", "lr=0.05"]));
    let lines: Vec<&str> = log.lines().collect();
    // Every line stamped; two attempts, the second resuming; it ends done.
    assert!(lines.iter().all(|l| l.len() > 26 && l.as_bytes()[23] == b'Z'), "{log}");
    assert!(lines[0].contains("▶ lr=0.05") && lines[0].contains("attempt 1"), "{log}");
    assert!(log.contains("attempt 2, resuming epoch"), "{log}");
    assert_eq!(log.matches("epoch 2/2:").count(), 1, "{log}");
    assert!(lines.last().unwrap().ends_with("✓ lr=0.05 done"), "{log}");
    // Resubmitting queues the other cancelled run again.
    let out = run(&home, &["submit", "--queue-only", f]);
    assert!(stdout(&out).contains("1 requeued"), "{}", stdout(&out));
    // Finished runs cannot be cancelled.
    let out = run(&home, &["cancel", "lr=0.05"]);
    assert!(stderr(&out).contains("it is not queued or running"), "{}", stderr(&out));
}

/// `rm --sweep` keeps what another sweep lists, asks without --yes, and
/// removes the records and files of the rest; `prune` removes what no record
/// refers to, and `--dry-run` only says so.
#[test]
fn rm_keeps_what_another_sweep_uses_and_prune_frees_unreferenced_files() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let a = crate::write_sweep(
        dir.path(),
        "a.toml",
        &crate::tiny_sweep("a", 32, 1, "[[grid]]\noptimizer.lr = [0.05, 0.1]\n"),
    );
    let b =
        crate::write_sweep(dir.path(), "b.toml", &crate::tiny_sweep("b", 32, 1, "[[grid]]\noptimizer.lr = [0.1]\n"));
    assert!(run(&home, &["-q", "submit", a.to_str().unwrap()]).status.success());
    assert!(run(&home, &["-q", "submit", b.to_str().unwrap()]).status.success());
    let before = runs(&home);
    let shared = by_name(&before, "lr=0.1").clone();
    let only_a = by_name(&before, "lr=0.05").clone();
    let dir_of = |key: &str| home.join(sweep::worker::run_dir(key));
    assert!(dir_of(&only_a.key).join("log.txt").exists());

    // No terminal, no --yes: nothing happens.
    let out = run(&home, &["rm", "--sweep", "a"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("pass --yes"), "{}", stderr(&out));
    assert_eq!(runs(&home).len(), before.len());

    let out = run(&home, &["rm", "--sweep", "a", "--yes"]);
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(text.contains("keep   a/lr=0.1") && text.contains("(also in b)"), "{text}");
    let after = runs(&home);
    assert_eq!(after.len(), 1, "only b's run is left");
    assert_eq!((after[0].id, after[0].sweep.as_str()), (shared.id, "b"));
    assert!(!dir_of(&only_a.key).exists(), "the removed run's files are gone");
    assert!(dir_of(&shared.key).exists(), "the shared run's files stay");
    assert_eq!(epochs(&home, shared.id).len(), 1, "and its epochs");
    let out = run(&home, &["results", "--sweep", "a"]);
    assert!(stderr(&out).contains("no sweep named `a`"), "{}", stderr(&out));

    // An orphan folder and a stray checkpoint file.
    std::fs::create_dir_all(home.join("runs/0123456789abcdef")).unwrap();
    std::fs::write(home.join("runs/0123456789abcdef/epoch-1.safetensors"), [0u8; 2048]).unwrap();
    std::fs::write(dir_of(&shared.key).join("epoch-9.safetensors"), [0u8; 100]).unwrap();
    let out = run(&home, &["prune", "--dry-run"]);
    let text = stdout(&out);
    assert!(text.contains("would remove runs/0123456789abcdef/ (2.0 KiB"), "{text}");
    assert!(text.contains("epoch-9.safetensors (100 B)"), "{text}");
    assert!(text.contains("2 file(s) or folder(s), 2.1 KiB would be freed"), "{text}");
    assert!(home.join("runs/0123456789abcdef").exists());
    let out = run(&home, &["prune"]);
    assert!(stdout(&out).contains("2.1 KiB freed"), "{}", stdout(&out));
    assert!(!home.join("runs/0123456789abcdef").exists());
    assert!(!dir_of(&shared.key).join("epoch-9.safetensors").exists());
    assert!(stdout(&run(&home, &["prune"])).contains("nothing to prune"));
    // What the run still needs is still there: it evaluates from its best checkpoint.
    let ck = block(async { Store::open(&home).await.unwrap().checkpoints(shared.id).await.unwrap() });
    assert!(ck.iter().all(|c| home.join(&c.path).exists()));

    // A run id removes one run; a running run would be refused (see cancel).
    let out = run(&home, &["rm", "--yes", &shared.key[..8]]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(runs(&home).is_empty());
}

/// `submit --rerun` trains finished runs again as new repeats (the next
/// seed), and again at the next submission.
#[test]
fn rerun_trains_finished_runs_again_as_new_repeats() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let file = crate::write_sweep(dir.path(), "r.toml", &crate::tiny_sweep("r", 32, 1, ""));
    let f = file.to_str().unwrap();
    assert!(run(&home, &["-q", "submit", f]).status.success());
    let out = run(&home, &["-q", "submit", f]);
    assert!(stdout(&out).contains("1 already done"), "{}", stdout(&out));
    for (i, seed) in [(2, 2), (3, 3)] {
        let out = run(&home, &["-q", "submit", "--rerun", f]);
        assert!(out.status.success());
        assert!(stdout(&out).contains(&format!("default -> default,seed={seed}")), "{}", stdout(&out));
        let rows = runs(&home);
        assert_eq!(rows.len(), i);
        assert!(rows.iter().all(|r| r.status == Status::Done));
    }
}

/// `plan` estimates each run's time: from a timed probe on a fresh machine,
/// from the runs like it once some trained, and says plainly when it is days.
#[test]
fn plan_estimates_from_a_probe_then_from_history_and_says_when_it_is_days() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let file = crate::write_sweep(dir.path(), "p.toml", &crate::tiny_sweep("p", 64, 1, ""));
    let f = file.to_str().unwrap();
    let out = run(&home, &["plan", "--device", "cpu", f]);
    let text = stdout(&out);
    assert!(text.contains("time (est.)") && text.contains("(1 from a timed probe)"), "{text}");
    assert!(!text.contains("this plan would take"), "{text}");
    assert!(text.contains("memory (est.)") && !text.contains("would fail when they start"), "{text}");
    let json = stdout(&run(&home, &["plan", "--device", "cpu", "--format", "json", f]));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(v["runs"][0]["estimated_seconds"].as_f64().unwrap() > 0.0, "{v}");
    // A batch of 16 is not measured (measuring takes 8 and 16 images); one of 32 is, and with
    // nothing left to take it would fail when it starts.
    assert!(v["runs"][0]["estimated_memory_bytes"].is_null(), "{v}");
    let json = stdout(&run(&home, &["plan", "--device", "cpu", "--format", "json", "--set", "batch_size=32", f]));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(v["runs"][0]["estimated_memory_bytes"].as_u64().unwrap() > 0, "{v}");
    let tight =
        sweep(&home).env("SWEEP_MEMORY", "1M").args(["plan", "--device", "cpu", "--set", "batch_size=32", f]).output();
    let text = stdout(&tight.unwrap());
    assert!(text.contains("memory: 1 run(s) would take more than the 0.0 KiB this process may still take"), "{text}");

    // Trained with one thread, then planned with one and with two: another CPU's (or a GPU's)
    // pace says nothing of this one's, so the second is timed.
    let threads = |n: &str, args: &[&str]| sweep(&home).env("RAYON_NUM_THREADS", n).args(args).output().unwrap();
    assert!(threads("1", &["-q", "submit", f]).status.success());
    let text = stdout(&threads("1", &["plan", "--device", "cpu", "--set", "optimizer.lr=0.2", f]));
    assert!(text.contains("(1 from earlier runs like them)"), "{text}");
    let text = stdout(&threads("2", &["plan", "--device", "cpu", "--set", "optimizer.lr=0.2", f]));
    assert!(text.contains("(1 from a timed probe, 1 earlier run(s) on other hardware not used)"), "{text}");

    let long = crate::tiny_sweep("p", 64, 1, "").replace("train_size = 64", "train_size = 900000");
    let long = crate::write_sweep(dir.path(), "long.toml", &long.replace("epochs = 1", "epochs = 20000"));
    let text = stdout(&run(&home, &["plan", "--device", "cpu", long.to_str().unwrap()]));
    assert!(text.contains("this plan would take") && text.contains(" days."), "{text}");
    assert!(!stdout(&run(&home, &["plan", "--no-estimate", f])).contains("time (est.)"));
}

/// `retry`, `cancel`, `prune` and `rm` answer in one JSON object with
/// `--format json`: each run or file and what was done to it.
#[test]
fn retry_cancel_prune_and_rm_answer_in_json() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let file = crate::write_sweep(
        dir.path(),
        "j.toml",
        &crate::tiny_sweep("j", 32, 1, "[[grid]]\noptimizer.lr = [0.05, 0.1]\n"),
    );
    assert!(run(&home, &["-q", "submit", file.to_str().unwrap()]).status.success());
    let json = |args: &[&str], code: i32| -> serde_json::Value {
        let out = run(&home, args);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {}", stderr(&out));
        serde_json::from_str(&stdout(&out)).unwrap_or_else(|e| panic!("{args:?}: {e}: {}", stdout(&out)))
    };
    let key = by_name(&runs(&home), "lr=0.05").key.clone();

    let v = json(&["retry", "j/lr=0.05", "--format", "json"], 1);
    let r = &v["runs"][0];
    assert_eq!((r["id"].as_str(), r["key"].as_str()), (Some(&key[..10]), Some(key.as_str())), "{v}");
    assert_eq!((r["sweep"].as_str(), r["name"].as_str()), (Some("j"), Some("lr=0.05")), "{v}");
    assert_eq!((r["was"].as_str(), r["now"].as_str()), (Some("done"), Some("refused")), "{v}");
    assert!(r["why"].as_str().unwrap().contains("--from-scratch"), "{v}");

    let v = json(&["retry", "j/lr=0.05", "--from-scratch", "--format", "json"], 0);
    assert_eq!((v["runs"][0]["now"].as_str(), v["runs"][0]["from_scratch"].as_bool()), (Some("queued"), Some(true)));
    let v = json(&["cancel", "--sweep", "j", "--format", "json"], 0);
    assert_eq!(v["runs"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!((v["runs"][0]["was"].as_str(), v["runs"][0]["now"].as_str()), (Some("queued"), Some("cancelled")));

    // Starting again from scratch dropped the run's records: its files are
    // the ones prune would remove.
    let v = json(&["prune", "--dry-run", "--format", "json"], 0);
    let files = v["files"].as_array().unwrap();
    assert!(!files.is_empty(), "{v}");
    let run_dir = sweep::worker::run_dir(&key);
    assert!(files.iter().all(|f| f["path"].as_str().unwrap().starts_with(&run_dir)), "{v}");
    let sum: u64 = files.iter().map(|f| f["bytes"].as_u64().unwrap()).sum();
    assert_eq!((v["dry_run"].as_bool(), v["freed_bytes"].as_u64()), (Some(true), Some(sum)), "{v}");

    let v = json(&["rm", "--yes", "j/lr=0.1", "--format", "json"], 0);
    assert_eq!((v["removed"][0]["name"].as_str(), v["done"].as_bool()), (Some("lr=0.1"), Some(true)), "{v}");
    assert_eq!(v["removed"][0]["bytes"], v["freed_bytes"], "{v}");
    assert!(v["freed_bytes"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(runs(&home).len(), 1);
}
