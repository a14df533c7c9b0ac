//! The queue through the library API: each backend-independent test runs on
//! SQLite and on PostgreSQL (see `pg`).

use std::path::Path;
use std::time::Duration;
use sweep::record::{CheckpointKind, CheckpointRecord, EpochRecord};
use sweep::spec;
use sweep::store::{Status, Store, StoreError, SubmitOutcome};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn sweep_spec(name: &str, lrs: &str) -> spec::SweepSpec {
    let text = format!(
        "name = \"{name}\"\ndataset = \"synthetic\"\n[defaults]\nmodel = \"smallcnn\"\nbatch_size = 8\nepochs = 2\n\
         optimizer = {{ name = \"sgd\", lr = 0.1 }}\n[[grid]]\noptimizer.lr = {lrs}\n"
    );
    spec::parse(Path::new("s.toml"), &text).unwrap()
}

fn epoch(n: i64) -> EpochRecord {
    EpochRecord {
        epoch: n,
        train_loss: 1.0,
        train_acc: 50.0,
        test_loss: 1.1,
        test_top5: Some(99.0),
        val_loss: None,
        val_acc: None,
        confusion: Some(vec![vec![3, 1], vec![0, n as u64]]),
        test_acc: 40.0 + n as f64,
        lr: 0.1,
        seconds: 1.0,
        images_per_sec: 10.0,
        peak_memory_bytes: Some(1000 + n),
    }
}

fn ckpt(kind: CheckpointKind, e: i64) -> CheckpointRecord {
    CheckpointRecord {
        kind,
        epoch: e,
        step: 0,
        path: format!("runs/x/e{e}.safetensors"),
        sha256: "aa".into(),
        state_path: format!("runs/x/e{e}.state.safetensors"),
        state_sha256: "bb".into(),
        metric: Some(40.0 + e as f64),
    }
}

#[test]
fn migrations_apply_to_a_new_and_to_an_empty_file_and_are_idempotent() {
    rt().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        assert!(store.runs(None).await.unwrap().is_empty());
        store.close().await;
        // Re-opening applies nothing new and keeps data.
        let store = Store::open(dir.path()).await.unwrap();
        store.submit(&sweep_spec("a", "[0.1]")).await.unwrap();
        store.close().await;
        assert_eq!(Store::open(dir.path()).await.unwrap().runs(None).await.unwrap().len(), 1);

        let empty = tempfile::tempdir().unwrap();
        std::fs::write(empty.path().join("sweep.db"), b"").unwrap();
        let store = Store::open(empty.path()).await.unwrap();
        assert!(store.sweeps().await.unwrap().is_empty());
    });
}

/// Workers started together on a new home (`sweep worker & sweep worker`)
/// each open the database: one applies the migrations, the others wait for
/// it and find them applied, instead of failing on "table already exists".
#[test]
fn workers_opening_a_new_database_together_migrate_it_once() {
    for round in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(6));
        let threads: Vec<_> = (0..6)
            .map(|_| {
                let (home, barrier) = (dir.path().to_owned(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    rt().block_on(async {
                        let store = Store::open(&home).await.map_err(|e| e.to_string())?;
                        let sweeps = store.sweeps().await.map_err(|e| e.to_string())?.len();
                        store.close().await;
                        Ok::<_, String>(sweeps)
                    })
                })
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap(), Ok(0), "round {round}");
        }
    }
}

#[test]
fn a_file_that_is_not_a_database_is_a_clear_error() {
    rt().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("sweep.db"), b"this is not sqlite, just some text that is long enough").unwrap();
        let err = Store::open(dir.path()).await.unwrap_err().to_string();
        assert!(err.contains("sweep.db"), "{err}");
    });
}

#[test]
fn submit_claim_finish_and_resubmit_follow_the_status_machine() {
    rt().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        for loc in crate::pg::locations(dir.path()).await {
            let store = Store::connect(dir.path(), &loc).await.unwrap();
            let s = sweep_spec("a", "[0.1, 0.2]");
            assert_eq!(store.submit(&s).await.unwrap(), vec![SubmitOutcome::Queued; 2]);
            assert_eq!(store.submit(&s).await.unwrap(), vec![SubmitOutcome::AlreadyQueued; 2]);

            let first = store.claim_next("w:1", "cpu").await.unwrap().unwrap();
            assert_eq!(first.name, "lr=0.1");
            assert_eq!(first.attempts, 1);
            store
                .record_epoch(
                    &first.lease(),
                    &epoch(1),
                    &ckpt(CheckpointKind::Latest, 1),
                    Some(&ckpt(CheckpointKind::Best, 1)),
                )
                .await
                .unwrap();
            // The same epoch cannot be recorded twice.
            assert!(store
                .record_epoch(&first.lease(), &epoch(1), &ckpt(CheckpointKind::Latest, 1), None)
                .await
                .is_err());
            store.record_epoch(&first.lease(), &epoch(2), &ckpt(CheckpointKind::Latest, 2), None).await.unwrap();
            // The best epoch's confusion matrix is kept (epoch 2 was not the best).
            assert_eq!(store.best_confusion(first.id).await.unwrap(), Some(vec![vec![3, 1], vec![0, 1]]));
            assert_eq!(store.epochs(first.id).await.unwrap()[1].test_top5, Some(99.0));
            store.finish(&first.lease(), Status::Done, None).await.unwrap();

            let second = store.claim_next("w:1", "cpu").await.unwrap().unwrap();
            store.finish(&second.lease(), Status::Failed, Some("boom")).await.unwrap();
            assert!(store.claim_next("w:1", "cpu").await.unwrap().is_none());

            // A second sweep overlapping the first: the finished config is not run again,
            // the failed one is queued again, the new one is queued.
            let overlap = sweep_spec("b", "[0.1, 0.2, 0.3]");
            assert_eq!(
                store.submit(&overlap).await.unwrap(),
                vec![SubmitOutcome::AlreadyDone, SubmitOutcome::Requeued, SubmitOutcome::Queued]
            );
            let rows = store.runs(Some("b")).await.unwrap();
            assert_eq!(
                rows.iter().map(|r| r.status).collect::<Vec<_>>(),
                vec![Status::Done, Status::Queued, Status::Queued]
            );
            assert_eq!(rows[0].best_epoch, Some(1));
            assert_eq!(rows[0].best_metric, Some(41.0));
            assert_eq!(rows[0].final_test_acc, Some(42.0));
            assert_eq!(rows[0].epochs_done, 2);
            assert!(rows[1].error.is_none());
            // Without a sweep filter each run appears once.
            assert_eq!(store.runs(None).await.unwrap().len(), 3);
            let ck = store.checkpoints(first.id).await.unwrap();
            assert_eq!(
                ck.iter().map(|c| (c.kind, c.epoch)).collect::<Vec<_>>(),
                vec![(CheckpointKind::Best, 1), (CheckpointKind::Latest, 2)]
            );
            store.close().await;
        }
    });
}

/// What a write retried after a lost connection asks first: was the epoch,
/// the run's end, the claim applied already (by this lease)?
#[test]
fn a_retried_write_can_tell_whether_its_first_try_was_applied() {
    rt().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        for loc in crate::pg::locations(dir.path()).await {
            let store = Store::connect(dir.path(), &loc).await.unwrap();
            store.submit(&sweep_spec("a", "[0.1, 0.2]")).await.unwrap();
            assert!(store.held_by("w:1").await.unwrap().is_none());
            let a = store.claim_next("w:1", "cpu").await.unwrap().unwrap();
            let held = store.held_by("w:1").await.unwrap().unwrap();
            assert_eq!((held.id, held.attempts, held.name.as_str()), (a.id, 1, "lr=0.1"));
            assert_eq!(held.lease(), a.lease());
            assert!(store.held_by("w:2").await.unwrap().is_none());

            assert!(!store.epoch_recorded(&a.lease(), 1).await.unwrap());
            store.record_epoch(&a.lease(), &epoch(1), &ckpt(CheckpointKind::Latest, 1), None).await.unwrap();
            assert!(store.epoch_recorded(&a.lease(), 1).await.unwrap());
            assert!(!store.epoch_recorded(&a.lease(), 2).await.unwrap());

            assert!(!store.ended_as(&a.lease(), Status::Done).await.unwrap());
            store.finish(&a.lease(), Status::Done, None).await.unwrap();
            assert!(store.ended_as(&a.lease(), Status::Done).await.unwrap());
            assert!(!store.ended_as(&a.lease(), Status::Failed).await.unwrap());
            assert!(store.held_by("w:1").await.unwrap().is_none());

            // An interruption by this lease, not one by a later attempt.
            let b = store.claim_next("w:1", "cpu").await.unwrap().unwrap();
            store.record_interrupt(&b.lease(), None).await.unwrap();
            assert!(store.ended_as(&b.lease(), Status::Interrupted).await.unwrap());
            let b2 = store.claim_next("w:2", "cpu").await.unwrap().unwrap();
            store.record_interrupt(&b2.lease(), None).await.unwrap();
            assert!(!store.ended_as(&b.lease(), Status::Interrupted).await.unwrap());
            store.close().await;
        }
    });
}

#[test]
fn interrupted_runs_are_claimed_before_queued_ones() {
    rt().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        for loc in crate::pg::locations(dir.path()).await {
            let store = Store::connect(dir.path(), &loc).await.unwrap();
            store.submit(&sweep_spec("a", "[0.1, 0.2, 0.3]")).await.unwrap();
            let a = store.claim_next("w:1", "cpu").await.unwrap().unwrap();
            let b = store.claim_next("w:1", "cpu").await.unwrap().unwrap();
            store.record_interrupt(&b.lease(), None).await.unwrap();
            let next = store.claim_next("w:2", "cpu").await.unwrap().unwrap();
            assert_eq!(next.id, b.id);
            assert_eq!(next.attempts, 2);
            // The first worker no longer holds b; it still holds a.
            assert!(matches!(store.heartbeat(&b.lease(), 1, 2).await, Err(StoreError::LostOwnership { .. })));
            store.heartbeat(&a.lease(), 1, 2).await.unwrap();
            store.close().await;
        }
    });
}

#[test]
fn runs_of_dead_or_silent_workers_are_recovered() {
    rt().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        for loc in crate::pg::locations(dir.path()).await {
            let store = Store::connect(dir.path(), &loc).await.unwrap();
            store.submit(&sweep_spec("a", "[0.1, 0.2]")).await.unwrap();
            let me = sweep::store::worker_id();
            let host = me.rsplit_once(':').unwrap().0.to_owned();
            // A process id that cannot exist (above Linux's pid_max).
            let dead = format!("{host}:4294967290");
            let a = store.claim_next(&dead, "cpu").await.unwrap().unwrap();
            let b = store.claim_next(&me, "cpu").await.unwrap().unwrap();
            let recovered = store.recover_stale(Duration::from_secs(3600), 3).await.unwrap();
            let ids = |r: Vec<sweep::store::Recovered>| r.into_iter().map(|r| (r.id, r.worker)).collect::<Vec<_>>();
            assert_eq!(ids(recovered), vec![(a.id, dead.clone())]);
            // A live worker with a fresh heartbeat keeps its run ...
            assert_eq!(store.runs(None).await.unwrap()[1].status, Status::Running);
            // ... unless its heartbeat is older than the limit.
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert_eq!(ids(store.recover_stale(Duration::from_millis(10), 3).await.unwrap()), vec![(b.id, me.clone())]);
            // The presumed-dead worker can no longer write.
            assert!(matches!(
                store.finish(&a.lease(), Status::Done, None).await,
                Err(StoreError::LostOwnership { .. })
            ));
            store.close().await;
        }
    });
}

/// A database written by the first release (migration 0001 only) upgrades in
/// place: the `runs` rebuild of 0002 keeps every run, epoch, checkpoint and
/// sweep link (foreign keys are off while migrating, so nothing cascades).
#[test]
fn a_version_one_database_upgrades_without_losing_records() {
    use sqlx::Connection;
    rt().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("sweep.db");
        let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(&db).create_if_missing(true).foreign_keys(true);
        let mut conn = sqlx::SqliteConnection::connect_with(&opts).await.unwrap();
        let mut v1 = sqlx::migrate!("./migrations");
        v1.migrations = std::borrow::Cow::Owned(v1.migrations[..1].to_vec());
        v1.run(&mut conn).await.unwrap();
        for sql in [
            "INSERT INTO sweeps (id, name, source_path, source_toml, metric, goal) VALUES (1, 's', 's.toml', '', 'test_acc', 'maximize')",
            "INSERT INTO runs (id, key, config_json, status, epochs_total, epochs_done) VALUES (7, 'k', '{}', 'done', 2, 2)",
            "INSERT INTO sweep_runs (sweep_id, run_id, name, position) VALUES (1, 7, 'r', 0)",
            "INSERT INTO epochs (run_id, epoch, train_loss, train_acc, test_loss, test_acc, lr, seconds, images_per_sec) VALUES (7, 1, 1.0, 50.0, 1.1, 45.0, 0.1, 2.0, 100.0)",
            "INSERT INTO epochs (run_id, epoch, train_loss, train_acc, test_loss, test_acc, lr, seconds, images_per_sec) VALUES (7, 2, 0.9, 55.0, 1.0, 47.0, 0.1, 2.0, 100.0)",
            "INSERT INTO checkpoints (run_id, kind, epoch, step, path, sha256, state_path, state_sha256) VALUES (7, 'best', 1, 0, 'p', 'a', 'q', 'b')",
        ] {
            sqlx::query(sql).execute(&mut conn).await.unwrap();
        }
        // 'diverged' does not exist in version 1.
        assert!(sqlx::query("UPDATE runs SET status = 'diverged'").execute(&mut conn).await.is_err());
        conn.close().await.unwrap();

        let store = Store::open(dir.path()).await.unwrap();
        let runs = store.runs(None).await.unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!((runs[0].id, runs[0].status, runs[0].name.as_str()), (7, Status::Done, "r"));
        let epochs = store.epochs(7).await.unwrap();
        assert_eq!((epochs.len(), epochs[0].test_acc, epochs[0].test_top5), (2, 45.0, None));
        // Migration 0004 copied the last epoch's numbers onto the run.
        let r = &runs[0];
        assert_eq!((r.final_train_acc, r.final_test_acc, r.final_test_loss), (Some(55.0), Some(47.0), Some(1.0)));
        assert_eq!(r.images_per_sec, Some(100.0));
        assert_eq!(store.checkpoints(7).await.unwrap().len(), 1);
        store.close().await;
        let mut conn = sqlx::SqliteConnection::connect_with(&opts).await.unwrap();
        sqlx::query("UPDATE runs SET status = 'diverged'").execute(&mut conn).await.unwrap();
        let fk: Vec<(String,)> = sqlx::query_as("SELECT \"table\" FROM pragma_foreign_key_check").fetch_all(&mut conn).await.unwrap();
        assert!(fk.is_empty(), "{fk:?}");
    });
}

/// Queued runs and finished runs are in the database file itself, not only in
/// its write-ahead log: deleting the `-wal` file loses neither.
#[test]
fn submissions_and_run_ends_survive_a_deleted_write_ahead_log() {
    rt().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        store.submit(&sweep_spec("w", "[0.1, 0.2]")).await.unwrap();
        let me = sweep::store::worker_id();
        let run = store.claim_next(&me, "cpu").await.unwrap().unwrap();
        store.finish(&run.lease(), Status::Done, None).await.unwrap();
        // Someone removes the -wal and -shm files while the first process still
        // has them open (so SQLite never gets to checkpoint them on close).
        for ext in ["db-wal", "db-shm"] {
            let _ = std::fs::remove_file(dir.path().join(format!("sweep.{ext}")));
        }
        let _first = store;
        let store = Store::open(dir.path()).await.unwrap();
        let statuses: Vec<Status> = store.runs(None).await.unwrap().iter().map(|r| r.status).collect();
        assert_eq!(statuses, [Status::Done, Status::Queued]);
    });
}

/// Worker deaths count in a row at one point: a run killed from outside at
/// different points (preemption, a kill storm) is never failed for it; a run
/// that kills its worker three times at the same point is.
#[test]
fn worker_deaths_count_only_without_progress_in_between() {
    rt().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        for loc in crate::pg::locations(dir.path()).await {
            let store = Store::connect(dir.path(), &loc).await.unwrap();
            store.submit(&sweep_spec("d", "[0.1]")).await.unwrap();
            let host = sweep::store::worker_id().rsplit_once(':').unwrap().0.to_owned();
            let dead = format!("{host}:4294967290");
            let die_at = |step: i64| {
                let (store, dead) = (&store, dead.clone());
                async move {
                    let run = store.claim_next(&dead, "cpu").await.unwrap().unwrap();
                    store.heartbeat(&run.lease(), step, 20).await.unwrap();
                    store.recover_stale(Duration::from_secs(3600), 3).await.unwrap().remove(0)
                }
            };
            // Killed at batches 5, 5 (no progress), 9 (progress: counts from 1), 9, 9.
            assert!(die_at(5).await.error.is_none());
            assert!(die_at(5).await.error.is_none());
            assert!(die_at(9).await.error.is_none());
            assert!(die_at(9).await.error.is_none());
            let last = die_at(9).await;
            let err = last.error.expect("failed after three deaths at batch 9");
            assert!(err.starts_with("killed its worker 3 times; last seen at epoch 1 batch 9"), "{err}");
            assert_eq!(store.runs(None).await.unwrap()[0].status, Status::Failed);
            store.close().await;
        }
    });
}

/// A lease is (worker, attempt): a write of an earlier attempt is refused even
/// when the same worker id holds the run again (a container restarted as PID 1
/// under the same host name).
#[test]
fn writes_are_fenced_by_worker_and_attempt() {
    rt().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        for loc in crate::pg::locations(dir.path()).await {
            let store = Store::connect(dir.path(), &loc).await.unwrap();
            store.submit(&sweep_spec("f", "[0.1]")).await.unwrap();
            let first = store.claim_next("pod-0:1", "cpu").await.unwrap().unwrap();
            store.record_interrupt(&first.lease(), None).await.unwrap();
            let second = store.claim_next("pod-0:1", "cpu").await.unwrap().unwrap();
            assert_eq!((second.id, second.attempts), (first.id, 2));
            let old = first.lease();
            let err = store.record_epoch(&old, &epoch(1), &ckpt(CheckpointKind::Latest, 1), None).await.unwrap_err();
            assert!(matches!(err, StoreError::LostOwnership { attempt: 1, .. }), "{err}");
            assert!(err.to_string().contains("attempt 1"), "{err}");
            assert!(store.heartbeat(&old, 1, 2).await.is_err());
            assert!(store.finish(&old, Status::Done, None).await.is_err());
            store.record_epoch(&second.lease(), &epoch(1), &ckpt(CheckpointKind::Latest, 1), None).await.unwrap();
            store.finish(&second.lease(), Status::Done, None).await.unwrap();
            assert_eq!(store.epochs(first.id).await.unwrap().len(), 1);
            store.close().await;
        }
    });
}

/// Many workers (each with its own connections) claiming at once: every run
/// is handed out exactly once.
#[test]
fn concurrent_claims_never_hand_out_a_run_twice() {
    let dir = tempfile::tempdir().unwrap();
    let locations = rt().block_on(crate::pg::locations(dir.path()));
    for loc in locations {
        let lrs: Vec<String> = (1..=40).map(|i| format!("{}", f64::from(i) / 1000.0)).collect();
        rt().block_on(async {
            let store = Store::connect(dir.path(), &loc).await.unwrap();
            store.submit(&sweep_spec("c", &format!("[{}]", lrs.join(", ")))).await.unwrap();
            store.close().await;
        });
        let threads: Vec<_> = (0..6)
            .map(|w| {
                let (home, loc) = (dir.path().to_owned(), loc.clone());
                std::thread::spawn(move || {
                    rt().block_on(async {
                        let store = Store::connect(&home, &loc).await.unwrap();
                        let mut mine = Vec::new();
                        while let Some(run) = store.claim_next(&format!("w:{w}"), "cpu").await.unwrap() {
                            store.finish(&run.lease(), Status::Done, None).await.unwrap();
                            mine.push(run.id);
                        }
                        store.close().await;
                        mine
                    })
                })
            })
            .collect();
        let mut all: Vec<i64> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
        all.sort_unstable();
        let n = all.len();
        all.dedup();
        assert_eq!((n, all.len()), (40, 40), "{loc}: a run was claimed twice or not at all");
        let _ = std::fs::remove_file(dir.path().join("sweep.db"));
    }
}

/// `sweep store copy`: everything arrives, verified by counts; copying again
/// changes nothing; a run that progressed in the source is brought up to date.
#[test]
fn a_store_copies_into_another_idempotently() {
    rt().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let source = Store::open(dir.path()).await.unwrap();
        source.submit(&sweep_spec("a", "[0.1, 0.2]")).await.unwrap();
        source.submit(&sweep_spec("b", "[0.2, 0.3]")).await.unwrap();
        let run = source.claim_next("w:1", "cpu").await.unwrap().unwrap();
        source
            .record_epoch(
                &run.lease(),
                &epoch(1),
                &ckpt(CheckpointKind::Latest, 1),
                Some(&ckpt(CheckpointKind::Best, 1)),
            )
            .await
            .unwrap();
        source.finish(&run.lease(), Status::Failed, Some("boom")).await.unwrap();
        let running = source.claim_next("w:1", "cpu").await.unwrap().unwrap();

        let mut targets = vec![sweep::store::Location::Sqlite(dir.path().join("copy.db"))];
        targets.extend(crate::pg::fresh().await);
        for to in targets {
            let target = Store::connect(dir.path(), &to).await.unwrap();
            let r = source.copy_into(&target).await.unwrap();
            assert_eq!((r.sweeps_added, r.runs_added, r.epochs_copied, r.checkpoints_copied), (2, 3, 1, 2), "{to}");
            assert_eq!(r.verified, (3, 1, 2));
            let rows = target.runs(Some("b")).await.unwrap();
            assert_eq!(rows.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["lr=0.2", "lr=0.3"]);
            assert_eq!(rows[0].status, Status::Interrupted, "a running run arrives interrupted");
            let all = target.runs(None).await.unwrap();
            assert_eq!(all[0].error.as_deref(), Some("boom"));
            assert_eq!(all[0].best_metric, Some(41.0));
            assert_eq!(target.epochs(all[0].id).await.unwrap()[0].test_top5, Some(99.0));
            assert_eq!(target.best_confusion(all[0].id).await.unwrap(), Some(vec![vec![3, 1], vec![0, 1]]));

            let again = source.copy_into(&target).await.unwrap();
            assert_eq!((again.sweeps_added, again.runs_added, again.runs_updated, again.runs_unchanged), (0, 0, 0, 3));
            target.close().await;
        }
        // Progress in the source since: the run is brought up to date.
        source.record_epoch(&running.lease(), &epoch(1), &ckpt(CheckpointKind::Latest, 1), None).await.unwrap();
        let target =
            Store::connect(dir.path(), &sweep::store::Location::Sqlite(dir.path().join("copy.db"))).await.unwrap();
        let r = source.copy_into(&target).await.unwrap();
        assert_eq!((r.runs_updated, r.runs_unchanged, r.epochs_copied), (1, 2, 1));
        assert_eq!(r.verified, (3, 2, 3));
    });
}

/// The documented views have the same columns on both backends.
#[test]
fn the_views_have_the_same_columns_on_both_backends() {
    rt().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let mut columns = Vec::new();
        for loc in crate::pg::locations(dir.path()).await {
            let store = Store::connect(dir.path(), &loc).await.unwrap();
            store.submit(&sweep_spec("v", "[0.1]")).await.unwrap();
            let run = store.claim_next("w:1", "cpu").await.unwrap().unwrap();
            store
                .record_epoch(
                    &run.lease(),
                    &epoch(1),
                    &ckpt(CheckpointKind::Latest, 1),
                    Some(&ckpt(CheckpointKind::Best, 1)),
                )
                .await
                .unwrap();
            columns.push(store.view_columns().await.unwrap());
            store.close().await;
        }
        assert!(columns[0].iter().any(|(view, col)| view == "runs_view" && col == "batch_size"));
        if let [sqlite, pg] = &columns[..] {
            assert_eq!(sqlite, pg);
        }
    });
}
