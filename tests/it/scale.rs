//! Scale-out through the binary: several workers sharing one queue (`sweep
//! worker --workers N`), on the SQLite file and on PostgreSQL (`--store`),
//! preemption handing a run to another worker, and `sweep store copy`.

use crate::cli::{numbers, run, stderr, stdout, sweep};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use sweep::record::EpochRecord;
use sweep::store::{Location, RunRow, Status, Store};

fn rows(home: &Path, loc: &Location) -> Vec<RunRow> {
    crate::cli::block(async {
        let s = Store::connect(home, loc).await.unwrap();
        let r = s.runs(None).await.unwrap();
        s.close().await;
        r
    })
}

fn epochs(home: &Path, loc: &Location, id: i64) -> Vec<EpochRecord> {
    crate::cli::block(async {
        let s = Store::connect(home, loc).await.unwrap();
        let e = s.epochs(id).await.unwrap();
        s.close().await;
        e
    })
}

/// Every store the test runs on: the SQLite file, and PostgreSQL where there is one.
fn stores(home: &Path) -> Vec<Location> {
    let mut out = vec![Location::default_in(home)];
    out.extend(crate::pg::fresh_blocking());
    out
}

#[test]
fn several_workers_share_one_queue_and_train_every_run_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = crate::write_sweep(
        dir.path(),
        "w.toml",
        &crate::tiny_sweep("w", 160, 2, "[[grid]]\noptimizer.lr = [0.05, 0.02]\nbatch_size = [16, 32]\n"),
    );
    let f = file.to_str().unwrap();
    // The reference: one worker, the SQLite file.
    let base = dir.path().join("base");
    assert!(run(&base, &["-q", "submit", f]).status.success());
    let reference: Vec<_> = crate::cli::runs(&base).iter().map(|r| numbers(&crate::cli::epochs(&base, r.id))).collect();

    for (i, loc) in stores(&dir.path().join("h0")).into_iter().enumerate() {
        let home = dir.path().join(format!("h{i}"));
        let store = loc.as_arg();
        assert!(run(&home, &["--store", &store, "submit", "--queue-only", f]).status.success());
        let out = run(&home, &["--store", &store, "worker", "--workers", "2", "--device", "cpu", "--exit-when-empty"]);
        assert!(out.status.success(), "{loc}: {}", stderr(&out));
        let err = stderr(&out);
        let done: Vec<&str> = err.lines().filter(|l| l.contains("✓ ") && l.ends_with(" done")).collect();
        assert_eq!(done.len(), 4, "{loc}: every run once:\n{err}");
        assert!(done.iter().all(|l| l.starts_with("[cpu#1] ") || l.starts_with("[cpu#2] ")), "{err}");
        assert!(err.contains("2 workers: cpu#1, cpu#2"), "{err}");
        let after = rows(&home, &loc);
        assert!(after.iter().all(|r| r.status == Status::Done && r.attempts == 1), "{loc}: {after:?}");
        let got: Vec<_> = after.iter().map(|r| numbers(&epochs(&home, &loc, r.id))).collect();
        assert_eq!(got, reference, "{loc}: the same numbers as one worker on SQLite");
        // Everything reads back through the same commands.
        let out = run(&home, &["--store", &store, "results", "--format", "csv"]);
        assert_eq!(stdout(&out).lines().count(), 5, "{}", stdout(&out));
    }
}

/// SIGUSR1 (Slurm's --signal) and SIGTERM (Kubernetes): the worker finishes
/// its batch, checkpoints mid-epoch, hands the run back and exits 138 / 143;
/// another worker resumes it to the numbers of an uninterrupted run.
#[test]
#[allow(unsafe_code)] // kill(2) on our own child: see the SAFETY comment
fn a_preempted_worker_hands_its_run_to_another_that_resumes_it_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let file = crate::write_sweep(dir.path(), "p.toml", &crate::tiny_sweep("p", 480, 2, ""));
    let f = file.to_str().unwrap();
    let base = dir.path().join("base");
    assert!(run(&base, &["-q", "submit", f]).status.success());
    let reference = numbers(&crate::cli::epochs(&base, crate::cli::runs(&base)[0].id));
    let backends = if crate::pg::server().is_some() { 2 } else { 1 };
    for i in 0..backends {
        for (signal, code) in [(libc::SIGUSR1, 138), (libc::SIGTERM, 143)] {
            let home = dir.path().join(format!("h{i}-{signal}"));
            let loc = if i == 0 { Location::default_in(&home) } else { crate::pg::fresh_blocking().unwrap() };
            let store = loc.as_arg();
            assert!(run(&home, &["--store", &store, "submit", "--queue-only", f]).status.success());
            let mut child =
                sweep(&home).args(["-q", "--store", &store, "worker"]).stderr(Stdio::piped()).spawn().unwrap();
            let start = Instant::now();
            while !rows(&home, &loc).first().is_some_and(|r| r.status == Status::Running && r.step >= 3) {
                assert!(child.try_wait().unwrap().is_none(), "the worker ended early");
                assert!(start.elapsed() < Duration::from_secs(300), "timed out");
                std::thread::sleep(Duration::from_millis(20));
            }
            // SAFETY: sending a signal to our own child process.
            assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
            let out = child.wait_with_output().unwrap();
            assert_eq!(out.status.code(), Some(code), "{}", String::from_utf8_lossy(&out.stderr));
            let handed_back = rows(&home, &loc);
            assert_eq!(handed_back[0].status, Status::Interrupted, "{loc}");
            assert!(handed_back[0].step >= 3 || handed_back[0].epochs_done >= 1, "checkpointed mid-epoch");
            // Another worker (another process) resumes it.
            let out = run(&home, &["--store", &store, "worker", "--exit-when-empty"]);
            assert!(out.status.success(), "{}", stderr(&out));
            assert!(stderr(&out).contains("attempt 2, resuming"), "{}", stderr(&out));
            let after = rows(&home, &loc);
            assert_eq!((after[0].status, after[0].attempts), (Status::Done, 2));
            assert_eq!(numbers(&epochs(&home, &loc, after[0].id)), reference, "{loc}: resumed after signal {signal}");
        }
    }
}

#[test]
fn store_copy_moves_the_history_and_results_read_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let file = crate::write_sweep(
        dir.path(),
        "c.toml",
        &crate::tiny_sweep("c", 64, 1, "[[grid]]\noptimizer.lr = [0.05, 0.02]\n"),
    );
    let home = dir.path().join("home");
    assert!(run(&home, &["-q", "submit", file.to_str().unwrap()]).status.success());
    let before = stdout(&run(&home, &["results", "--format", "csv"]));
    let db = home.join("sweep.db");
    let mut targets = vec![Location::Sqlite(dir.path().join("other.db"))];
    targets.extend(crate::pg::fresh_blocking());
    for to in targets {
        let args = ["store", "copy", "--from", db.to_str().unwrap(), "--to", &to.as_arg()];
        let out = run(&home, &args);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(stdout(&out).contains("runs: 2 added"), "{}", stdout(&out));
        assert!(stdout(&out).contains("verified: 2 runs with 2 epochs and 4 checkpoint records"), "{}", stdout(&out));
        let again = run(&home, &args);
        assert!(stdout(&again).contains("runs: 0 added, 0 updated, 2 already there"), "{}", stdout(&again));
        let after = stdout(&run(&home, &["--store", &to.as_arg(), "results", "--format", "csv"]));
        assert_eq!(after, before, "{to}");
    }
    let out = run(&home, &["store", "copy", "--from", "nope.db", "--to", "x.db"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--from nope.db: no such database file"), "{}", stderr(&out));
}

#[test]
fn max_runs_stops_a_worker_after_that_many_runs() {
    let dir = tempfile::tempdir().unwrap();
    let file = crate::write_sweep(
        dir.path(),
        "m.toml",
        &crate::tiny_sweep("m", 32, 1, "[[grid]]\noptimizer.lr = [0.05, 0.02]\n"),
    );
    let home = dir.path().join("home");
    assert!(run(&home, &["submit", "--queue-only", file.to_str().unwrap()]).status.success());
    let out = run(&home, &["worker", "--max-runs", "1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let statuses: Vec<Status> = crate::cli::runs(&home).iter().map(|r| r.status).collect();
    assert_eq!(statuses, [Status::Done, Status::Queued]);
    assert!(stderr(&out).contains("worker: 1 run(s) handled: 1 done"), "{}", stderr(&out));
}

/// A TPE search with two workers: each proposal is made in one transaction,
/// so the workers never take the same trial number; every trial runs once.
#[test]
fn two_workers_share_a_tpe_search_without_duplicate_trials() {
    let dir = tempfile::tempdir().unwrap();
    let search = "[[search]]\nmethod = \"tpe\"\ncount = 8\nstartup = 2\nepochs = 1\n\
                  \"optimizer.lr\" = { log_uniform = [1e-3, 0.3] }\n";
    let file = crate::write_sweep(dir.path(), "t.toml", &crate::tiny_sweep("t", 64, 1, search));
    let f = file.to_str().unwrap();
    for (i, loc) in stores(&dir.path().join("h0")).into_iter().enumerate() {
        let home = dir.path().join(format!("h{i}"));
        let store = loc.as_arg();
        assert!(run(&home, &["--store", &store, "submit", "--queue-only", f]).status.success());
        let status = stdout(&run(&home, &["--store", &store, "status"]));
        assert!(status.contains("search `search1` of `t` (tpe): 2 of 8 trials; 6 more to be proposed"), "{status}");
        // `sweep slurm`: one array task per run to train, the trials TPE is
        // still to propose included.
        let job = dir.path().join(format!("job{i}.sh"));
        let out = run(&home, &["--store", &store, "slurm", f, "-o", job.to_str().unwrap()]);
        assert!(out.status.success(), "{loc}: {}", stderr(&out));
        let script = std::fs::read_to_string(&job).unwrap();
        assert!(script.contains("#SBATCH --array=0-7\n") && script.contains("(8 run(s) to train)"), "{script}");
        std::fs::remove_file(&job).unwrap();
        let out = run(&home, &["--store", &store, "worker", "--workers", "2", "--device", "cpu", "--exit-when-empty"]);
        assert!(out.status.success(), "{loc}: {}", stderr(&out));
        let status = stdout(&run(&home, &["--store", &store, "status"]));
        assert!(status.contains("search `search1` of `t` (tpe): 8 of 8 trials; all proposed"), "{status}");
        let again = run(&home, &["--store", &store, "slurm", f, "-o", job.to_str().unwrap()]);
        assert!(again.status.success(), "{loc}: {}", stderr(&again));
        assert!(stdout(&again).contains("nothing to train: every run of `t` is finished"), "{}", stdout(&again));
        assert!(!job.exists(), "no script for a finished sweep");
        let err = stderr(&out);
        assert_eq!(err.lines().filter(|l| l.contains("✓ ") && l.ends_with(" done")).count(), 8, "{loc}:\n{err}");
        assert_eq!(err.lines().filter(|l| l.contains("proposed ")).count(), 6, "{loc}:\n{err}");
        let after = rows(&home, &loc);
        assert_eq!(after.len(), 8, "{loc}");
        assert!(after.iter().all(|r| r.status == Status::Done && r.attempts == 1), "{loc}: {after:?}");
        let mut names: Vec<&str> = after.iter().map(|r| r.name.split(':').next().unwrap()).collect();
        names.sort_unstable();
        let expected: Vec<String> = (1..=8).map(|n| format!("search1-{n:02}")).collect();
        assert_eq!(names, expected, "{loc}: trials 1-8, each once");
    }
}

/// ASHA with two workers: rung arrivals are recorded in one order (the
/// sweep's row is locked for them), every run ends, and the end state is
/// what a replay of the arrivals says: no stopped run is left in the top
/// ⌊n/η⌋ of its rung, and every run that trained past a rung went on there or
/// was promoted.
#[test]
fn two_workers_share_an_asha_sweep_and_its_decisions_replay() {
    let dir = tempfile::tempdir().unwrap();
    let extra =
        "[[search]]\nmethod = \"random\"\ncount = 6\nseed = 2\n\"optimizer.lr\" = { log_uniform = [1e-3, 0.3] }\n";
    let text = crate::tiny_sweep("a", 64, 3, extra).replacen(
        "[defaults]",
        "early_terminate = { method = \"asha\", min_epochs = 1, reduction_factor = 2 }\n[defaults]",
        1,
    );
    let file = crate::write_sweep(dir.path(), "a.toml", &text);
    let f = file.to_str().unwrap();
    for (i, loc) in stores(&dir.path().join("h0")).into_iter().enumerate() {
        let home = dir.path().join(format!("h{i}"));
        let store = loc.as_arg();
        assert!(run(&home, &["--store", &store, "submit", "--queue-only", f]).status.success());
        let out = run(&home, &["--store", &store, "worker", "--workers", "2", "--device", "cpu", "--exit-when-empty"]);
        assert!(out.status.success(), "{loc}: {}", stderr(&out));
        crate::cli::block(async {
            let s = Store::connect(&home, &loc).await.unwrap();
            let rows = s.runs(None).await.unwrap();
            assert_eq!(rows.len(), 6);
            assert!(rows.iter().all(|r| r.status == Status::Done), "{loc}: {rows:?}");
            let ctx = s.asha_context(rows[0].id).await.unwrap().unwrap();
            let rules = ctx.settings.asha();
            for rung in rules.rungs(3) {
                let arrivals = s.rung_arrivals(&ctx, rung).await.unwrap();
                let stopped = s.stopped_at(&ctx, rung).await.unwrap();
                assert!(rules.promotions(&arrivals, &stopped).is_empty(), "{loc}: a stopped run left in the top");
                for r in &rows {
                    let Some(st) = rules.standing(&arrivals, r.id) else { continue };
                    if stopped.contains(&r.id) {
                        assert_eq!(r.epochs_done, rung as i64, "{loc}");
                        assert!(st.stopped_on_arrival || !st.promotable, "{loc}: {st:?}");
                    } else if r.epochs_done > rung as i64 {
                        // Promoted: queued again, so claimed again (its note may since say a later rung stopped it).
                        let promoted = r.attempts > 1;
                        let k = arrivals.iter().position(|a| a.run == r.id).unwrap();
                        let on_arrival = rules.standing(&arrivals[..=k], r.id).unwrap();
                        assert!(on_arrival.continues() || promoted || st.promotable, "{loc}: run {} {st:?}", r.id);
                    }
                }
            }
            s.close().await;
        });
    }
}

/// PostgreSQL restarting under a worker: the worker waits for it and goes on,
/// nothing recorded twice or lost. An outage longer than
/// `SWEEP_STORE_WAIT_SECS` stops the worker with its run still `running`; the
/// next worker resumes that run to the numbers of an uninterrupted one.
#[test]
fn a_database_outage_is_waited_out_and_a_long_one_stops_the_worker_with_nothing_lost() {
    let Some(pg) = crate::pg::Cluster::start("outage") else { return };
    let dir = tempfile::tempdir().unwrap();
    let file = crate::write_sweep(
        dir.path(),
        "o.toml",
        &crate::tiny_sweep("o", 320, 6, "[[grid]]\noptimizer.lr = [0.05, 0.02]\n"),
    );
    let f = file.to_str().unwrap();
    let base = dir.path().join("base");
    assert!(run(&base, &["-q", "submit", f]).status.success());
    let reference: Vec<_> = crate::cli::runs(&base).iter().map(|r| numbers(&crate::cli::epochs(&base, r.id))).collect();

    let loc = Location::Postgres(pg.url.clone());
    let store = loc.as_arg();
    for (wait, home) in [("60", dir.path().join("short")), ("1", dir.path().join("long"))] {
        assert!(run(&home, &["--store", &store, "submit", "--queue-only", f]).status.success());
        let mut child = sweep(&home)
            .args(["--store", &store, "worker", "--exit-when-empty"])
            .env("SWEEP_STORE_WAIT_SECS", wait)
            .env("RUST_LOG", "sweep=warn")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while rows(&home, &loc).first().is_none_or(|r| r.epochs_done < 1) {
            assert!(child.try_wait().unwrap().is_none(), "the worker ended early");
            assert!(start.elapsed() < Duration::from_secs(300), "timed out");
            std::thread::sleep(Duration::from_millis(20));
        }
        pg.down();
        std::thread::sleep(Duration::from_secs(3));
        pg.up();
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        eprintln!("SWEEP_STORE_WAIT_SECS={wait}:\n{err}");
        let after = rows(&home, &loc);
        if wait == "60" {
            // Waited out: every epoch recorded once, by the first attempt.
            assert!(out.status.success(), "{err}");
            assert!(err.contains("does not answer") && err.contains("answers again, after"), "{err}");
            assert!(after.iter().all(|r| r.status == Status::Done && r.attempts == 1), "{after:?}");
        } else {
            // Given up: the worker stops, the run stays running, nothing else changed.
            assert_eq!(out.status.code(), Some(2), "{err}");
            assert!(err.contains("unreachable for") && err.contains("this worker stops"), "{err}");
            assert!(err.contains("the run `lr=0.05` stays running"), "{err}");
            assert_eq!(
                after.iter().map(|r| r.status).collect::<Vec<_>>(),
                [Status::Running, Status::Queued],
                "{after:?}"
            );
            let log = std::fs::read_to_string(home.join(sweep::worker::run_dir(&after[0].key)).join("log.txt"))
                .unwrap_or_default();
            assert!(log.contains("stays running: once its heartbeat is SWEEP_STALE_SECS old"), "{log}");
            // The next worker (its predecessor's process is gone) resumes it.
            let out = run(&home, &["--store", &store, "worker", "--exit-when-empty"]);
            assert!(out.status.success(), "{}", stderr(&out));
            let after = rows(&home, &loc);
            assert!(after.iter().all(|r| r.status == Status::Done), "{after:?}");
            assert_eq!(after[0].attempts, 2, "{after:?}");
        }
        let got: Vec<_> = after.iter().map(|r| numbers(&epochs(&home, &loc, r.id))).collect();
        assert_eq!(got, reference, "SWEEP_STORE_WAIT_SECS={wait}: the numbers of an uninterrupted worker");
        // The second home starts from an empty database.
        crate::cli::block(async {
            use sqlx::Connection;
            let mut c = sqlx::PgConnection::connect(&pg.url).await.unwrap();
            sqlx::query("DROP SCHEMA public CASCADE").execute(&mut c).await.unwrap();
            sqlx::query("CREATE SCHEMA public").execute(&mut c).await.unwrap();
        });
    }
}
