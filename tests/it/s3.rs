//! A local S3 server (moto, from PyPI, on 127.0.0.1) for the artifact-store
//! tests, and those tests.
//!
//! `SWEEP_TEST_S3=http://127.0.0.1:PORT` names a running server; `off` turns
//! S3 off. Otherwise, where `scripts/s3.sh install` has put moto into its
//! virtual environment, the first test that asks starts a server that stops
//! when this test process ends; without one the S3 tests are skipped and say
//! so (`.ci/run` installs moto and sets `SWEEP_TEST_REQUIRE_S3`, which makes
//! that a failure).

use crate::cli::{numbers, run, stderr, sweep};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use sweep::store::{Location, Status, Store};

static SERVER: OnceLock<Option<String>> = OnceLock::new();
static NEXT: AtomicUsize = AtomicUsize::new(0);

fn start() -> Option<String> {
    match std::env::var("SWEEP_TEST_S3").ok().as_deref() {
        Some("off" | "0" | "") => {
            eprintln!("S3: off (SWEEP_TEST_S3=off); the S3 tests are skipped");
            return None;
        }
        Some(url) => return Some(url.to_owned()),
        None => {}
    }
    let dir = format!("/tmp/sweep-test-s3-{}", std::process::id());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/s3.sh");
    let out = Command::new("bash").args([script, "start", &dir, &std::process::id().to_string()]).output().ok()?;
    if !out.status.success() {
        assert!(
            std::env::var_os("SWEEP_TEST_REQUIRE_S3").is_none(),
            "SWEEP_TEST_REQUIRE_S3 is set but the S3 server did not start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!(
            "S3: no local server ({}); the S3 tests are SKIPPED (run scripts/s3.sh install)",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return None;
    }
    let url = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    eprintln!("S3: moto at {url} (stops when the tests end)");
    Some(url)
}

/// A new bucket on the local server: (endpoint, bucket).
pub fn fresh_bucket() -> Option<(String, String)> {
    let endpoint = SERVER.get_or_init(start).clone()?;
    let bucket = format!("t{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst));
    ureq::put(&format!("{endpoint}/{bucket}")).send_empty().expect("creating a bucket");
    Some((endpoint, bucket))
}

/// The AWS variables that point sweep at the local server.
pub fn aws_env(cmd: &mut Command, endpoint: &str) {
    cmd.env("AWS_ENDPOINT", endpoint)
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_DEFAULT_REGION", "us-east-1");
}

/// The keys in the bucket under `prefix`.
pub fn keys(endpoint: &str, bucket: &str, prefix: &str) -> Vec<String> {
    let mut resp = ureq::get(&format!("{endpoint}/{bucket}?list-type=2&prefix={prefix}")).call().unwrap();
    let xml = resp.body_mut().read_to_string().unwrap();
    let mut out: Vec<String> =
        xml.split("<Key>").skip(1).filter_map(|s| s.split_once("</Key>").map(|(k, _)| k.to_owned())).collect();
    out.sort();
    out
}

/// Two machines (two homes) share a database and an S3 bucket: the first is
/// preempted mid-epoch (SIGUSR1), the second, with an empty home, fetches the
/// checkpoint from the bucket, resumes to the numbers of an uninterrupted
/// run, and trains the rest; in the end the bucket holds exactly the
/// checkpoint files the database refers to.
#[test]
#[allow(unsafe_code)] // kill(2) on our own child: see the SAFETY comment
fn another_machine_resumes_from_s3_and_the_bucket_holds_what_the_database_references() {
    let Some((endpoint, bucket)) = fresh_bucket() else { return };
    let dir = tempfile::tempdir().unwrap();
    let file = crate::write_sweep(
        dir.path(),
        "s.toml",
        &crate::tiny_sweep("s", 480, 2, "[[grid]]\noptimizer.lr = [0.05, 0.02]\n"),
    );
    let f = file.to_str().unwrap();
    let base = dir.path().join("base");
    assert!(run(&base, &["-q", "submit", f]).status.success());
    let reference: Vec<_> = crate::cli::runs(&base).iter().map(|r| numbers(&crate::cli::epochs(&base, r.id))).collect();

    let loc = crate::pg::fresh_blocking().unwrap_or_else(|| Location::Sqlite(dir.path().join("shared.db")));
    let store = loc.as_arg();
    let artifacts = format!("s3://{bucket}/exp");
    let (a, b) = (dir.path().join("machine-a"), dir.path().join("machine-b"));
    let with = |home: &Path, args: &[&str]| {
        let mut c = sweep(home);
        c.args(["--store", &store, "--artifacts", &artifacts]).args(args);
        aws_env(&mut c, &endpoint);
        c
    };
    assert!(with(&a, &["-q", "submit", "--queue-only", f]).status().unwrap().success());
    let rows = |home: &Path| {
        crate::cli::block(async {
            let s = Store::connect(home, &loc).await.unwrap();
            let r = s.runs(None).await.unwrap();
            s.close().await;
            r
        })
    };
    let mut child = with(&a, &["-q", "worker"]).stderr(Stdio::piped()).spawn().unwrap();
    let start = Instant::now();
    while !rows(&a).first().is_some_and(|r| r.epochs_done == 1 && r.step >= 3) {
        assert!(child.try_wait().unwrap().is_none(), "the worker ended early");
        assert!(start.elapsed() < Duration::from_secs(300), "timed out");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGUSR1) }, 0);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(138), "{}", String::from_utf8_lossy(&out.stderr));
    // Machine B has none of A's files: only the bucket.
    assert!(!b.exists());
    let out = with(&b, &["worker", "--exit-when-empty"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("attempt 2, resuming epoch 2 at batch"), "{err}");
    let after = rows(&b);
    assert!(after.iter().all(|r| r.status == Status::Done), "{after:?}");
    let got: Vec<_> = after
        .iter()
        .map(|r| {
            numbers(&crate::cli::block(async {
                let s = Store::connect(&b, &loc).await.unwrap();
                s.epochs(r.id).await.unwrap()
            }))
        })
        .collect();
    assert_eq!(got, reference, "resumed on another machine from S3");

    // The bucket holds exactly the checkpoint files the database refers to.
    let mut referenced: Vec<String> = crate::cli::block(async {
        let s = Store::connect(&b, &loc).await.unwrap();
        let mut out = Vec::new();
        for r in &after {
            for c in s.checkpoints(r.id).await.unwrap() {
                out.push(format!("exp/{}", c.path));
                out.push(format!("exp/{}", c.state_path));
            }
        }
        out
    });
    referenced.sort();
    referenced.dedup();
    let held: Vec<String> =
        keys(&endpoint, &bucket, "exp/runs/").into_iter().filter(|k| k.ends_with(".safetensors")).collect();
    assert_eq!(held, referenced);
    // The log of the run that moved holds both attempts, and a third machine reads it from the bucket.
    let c = dir.path().join("machine-c");
    let moved = after.iter().find(|r| r.attempts == 2).expect("the resumed run");
    let out = with(&c, &["logs", &moved.key[..10]]).output().unwrap();
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(log.contains("attempt 1") && log.contains("attempt 2, resuming"), "{log}");
    assert!(log.contains("… lr=0.05 interrupted") || log.contains("interrupted"), "{log}");
    // Exported from that third machine: each run's best checkpoint and config.json come from the bucket.
    let mlflow = dir.path().join("mlflow");
    let out = with(&c, &["export", "--format", "mlflow", mlflow.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut found = (0, 0);
    for sweep_dir in std::fs::read_dir(&mlflow).unwrap().flatten().filter(|e| e.path().is_dir()) {
        for run_dir in std::fs::read_dir(sweep_dir.path()).unwrap().flatten() {
            let a = run_dir.path().join("artifacts");
            found.0 += usize::from(a.join("best.safetensors").exists());
            found.1 += usize::from(a.join("config.json").exists());
        }
    }
    assert_eq!(found, (2, 2), "best checkpoints and configs exported from the bucket");
    // Beside them, each run's config.json and log.txt.
    let all = keys(&endpoint, &bucket, "exp/runs/");
    assert_eq!(all.iter().filter(|k| k.ends_with("/config.json")).count(), 2, "{all:?}");
    assert_eq!(all.iter().filter(|k| k.ends_with("/log.txt")).count(), 2, "{all:?}");
}

/// A bucket that does not exist stops the worker before it claims anything:
/// the error names the store, the run stays queued, nothing is recorded.
#[test]
fn a_missing_bucket_stops_the_worker_before_it_claims_a_run() {
    let Some((endpoint, _)) = fresh_bucket() else { return };
    let dir = tempfile::tempdir().unwrap();
    let file = crate::write_sweep(dir.path(), "m.toml", &crate::tiny_sweep("m", 64, 1, ""));
    let home = dir.path().join("home");
    let mut c = sweep(&home);
    c.args(["--artifacts", "s3://no-such-bucket/x", "-q", "submit", file.to_str().unwrap()]);
    aws_env(&mut c, &endpoint);
    let out = c.output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("the artifact store s3://no-such-bucket/x cannot be written ("), "{err}");
    assert!(err.contains("nothing was claimed"), "{err}");
    let r = &crate::cli::runs(&home)[0];
    assert_eq!((r.status, r.attempts), (Status::Queued, 0));
    assert!(crate::cli::epochs(&home, r.id).is_empty());
}
