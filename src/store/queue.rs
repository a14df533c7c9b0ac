//! The queue: submitting a sweep, recovering runs of dead workers, claiming
//! the next run, heartbeats.

use super::identity::worker_is_dead;
use super::{ClaimedRun, Event, Recovered, Result, Status, Store, StoreError, SubmitOutcome, Tx};
use crate::spec::{PlannedRun, SweepSpec};
use std::time::Duration;

impl Store {
    /// Records a sweep and queues its runs, in one transaction. Finished
    /// configurations are not queued again; failed ones are.
    pub async fn submit(&self, spec: &SweepSpec) -> Result<Vec<SubmitOutcome>> {
        let e = self.sql();
        let now_iso = self.dialect.now_iso;
        let mut tx = self.write_tx().await?;
        let sweep_id: i64 = sqlx::query_scalar(&format!(
            "INSERT INTO sweeps (name, description, source_path, source_toml, metric, goal, early_terminate_json)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (name) DO UPDATE SET description = $2, source_path = $3, source_toml = $4,
                 metric = $5, goal = $6, early_terminate_json = $7, updated_at = {now_iso}
             RETURNING id"
        ))
        .bind(&spec.name)
        .bind(&spec.description)
        // Absolute: a worker elsewhere expands TPE proposals from this file, and relative
        // dataset paths in it resolve against its folder.
        .bind(std::path::absolute(&spec.path).unwrap_or_else(|_| spec.path.clone()).display().to_string())
        .bind(&spec.text)
        .bind(spec.metric.as_str())
        .bind(spec.metric.goal())
        .bind(spec.early_terminate.map(|et| serde_json::to_string(&et).expect("EarlyTerminate serialises")))
        .fetch_one(&mut *tx)
        .await
        .map_err(&e)?;
        let mut outcomes = Vec::with_capacity(spec.runs.len());
        for (position, run) in spec.runs.iter().enumerate() {
            outcomes.push(self.submit_run(&mut tx, sweep_id, position as i64, run).await?);
        }
        tx.commit().await.map_err(&e)?;
        self.checkpoint_wal().await;
        Ok(outcomes)
    }

    pub(super) async fn submit_run(
        &self,
        tx: &mut Tx,
        sweep_id: i64,
        position: i64,
        run: &PlannedRun,
    ) -> Result<SubmitOutcome> {
        let e = self.sql();
        let config_json = serde_json::to_string(&run.config).expect("RunConfig serialises");
        let existing: Option<(i64, String)> = sqlx::query_as("SELECT id, status FROM runs WHERE key = $1")
            .bind(&run.key.0)
            .fetch_optional(&mut **tx)
            .await
            .map_err(&e)?;
        let (run_id, outcome) = match existing {
            None => {
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO runs (key, config_json, epochs_total) VALUES ($1, $2, $3) RETURNING id",
                )
                .bind(&run.key.0)
                .bind(&config_json)
                .bind(run.config.epochs as i64)
                .fetch_one(&mut **tx)
                .await
                .map_err(&e)?;
                (id, SubmitOutcome::Queued)
            }
            Some((id, status)) => {
                let status = self.parse_status(&status)?;
                let outcome = match status {
                    Status::Done => SubmitOutcome::AlreadyDone,
                    Status::Queued | Status::Running | Status::Interrupted => SubmitOutcome::AlreadyQueued,
                    Status::Failed | Status::Diverged | Status::Cancelled => {
                        status.apply(Event::Requeue).expect("failed, diverged and cancelled runs can be requeued");
                        sqlx::query("UPDATE runs SET status = 'queued', error = NULL, worker = NULL, worker_deaths = 0, death_epoch = NULL, death_step = NULL, cancel_requested = 0 WHERE id = $1")
                            .bind(id)
                            .execute(&mut **tx)
                            .await
                            .map_err(&e)?;
                        SubmitOutcome::Requeued
                    }
                };
                (id, outcome)
            }
        };
        let reference = run.reference.as_ref().map(|r| serde_json::to_string(r).expect("Reference serialises"));
        sqlx::query(
            "INSERT INTO sweep_runs (sweep_id, run_id, name, position, reference_json) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (sweep_id, run_id) DO UPDATE SET name = $3, position = $4, reference_json = $5",
        )
        .bind(sweep_id)
        .bind(run_id)
        .bind(&run.name)
        .bind(position)
        .bind(reference)
        .execute(&mut **tx)
        .await
        .map_err(&e)?;
        if let Some(t) = &run.trial {
            // A random search's trial or a TPE search's start-up one (both drawn at
            // random); TPE's proposals are recorded by `propose`.
            self.record_trial(tx, sweep_id, run_id, t, "random", None).await?;
        }
        Ok(outcome)
    }

    /// Marks `running` runs whose worker is gone as `interrupted`, so that they
    /// resume: the worker is on this host and its process no longer exists, or
    /// its heartbeat is older than `stale_after`. Each such death is counted; a
    /// run whose worker died `max_deaths` times is failed instead ("killed its
    /// worker 3 times; last seen at epoch E batch B"), so that a run that kills
    /// every worker cannot block the queue.
    pub async fn recover_stale(&self, stale_after: Duration, max_deaths: u32) -> Result<Vec<Recovered>> {
        let e = self.sql();
        let (now_unix, now_iso) = (self.dialect.now_unix, self.dialect.now_iso);
        type Held = (i64, Option<String>, Option<f64>, i64, i64, i64, Option<String>, Option<i64>, Option<i64>);
        let rows: Vec<Held> = sqlx::query_as(&format!(
            "SELECT id, worker, {now_unix} - heartbeat, worker_deaths, epochs_done, step,
                    (SELECT name FROM sweep_runs WHERE run_id = runs.id ORDER BY sweep_id LIMIT 1),
                    death_epoch, death_step
             FROM runs WHERE status = 'running'"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(&e)?;
        let mut recovered = Vec::new();
        for (id, worker, age, deaths, epochs_done, step, name, death_epoch, death_step) in rows {
            let worker = worker.unwrap_or_default();
            let stale = age.is_none_or(|a| a > stale_after.as_secs_f64());
            if !(stale || worker_is_dead(&worker)) {
                continue;
            }
            // Deaths count in a row at one point: progress since the last one starts over.
            let progressed = match (death_epoch, death_step) {
                (Some(e), Some(s)) => (epochs_done, step) > (e, s),
                _ => true,
            };
            let deaths = if progressed { 1 } else { deaths + 1 };
            let failed = deaths >= i64::from(max_deaths.max(1));
            let error = failed.then(|| {
                let times = if deaths == 1 { "once".to_owned() } else { format!("{deaths} times") };
                format!(
                    "killed its worker {times}; last seen at epoch {} batch {step} (each time at that point: a \
                     value that exhausts memory, or a crash; `sweep retry` queues it again)",
                    epochs_done + 1
                )
            });
            let status = if failed { "failed" } else { "interrupted" };
            // A run that `sweep cancel` asked to stop is cancelled, not resumed.
            let done = sqlx::query(&format!(
                "UPDATE runs SET status = CASE WHEN $3 = 'interrupted' AND cancel_requested = 1
                                              THEN 'cancelled' ELSE $3 END,
                     cancel_requested = 0, worker = NULL, worker_deaths = $4, error = $5,
                     death_epoch = epochs_done, death_step = step,
                     finished_at = CASE WHEN $3 = 'failed' THEN {now_iso} ELSE finished_at END
                 WHERE id = $1 AND status = 'running' AND COALESCE(worker, '') = $2"
            ))
            .bind(id)
            .bind(&worker)
            .bind(status)
            .bind(deaths)
            .bind(&error)
            .execute(&self.pool)
            .await
            .map_err(&e)?;
            if done.rows_affected() == 1 {
                let name = name.unwrap_or_else(|| format!("run {id}"));
                recovered.push(Recovered { id, name, worker, error });
            }
        }
        Ok(recovered)
    }

    /// Every running run: (id, worker, seconds since its last heartbeat).
    pub async fn held_runs(&self) -> Result<Vec<(i64, String, f64)>> {
        let rows: Vec<(i64, Option<String>, Option<f64>)> = sqlx::query_as(&format!(
            "SELECT id, worker, {} - heartbeat FROM runs WHERE status = 'running'",
            self.dialect.now_unix
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(self.sql())?;
        Ok(rows.into_iter().map(|(id, w, age)| (id, w.unwrap_or_default(), age.unwrap_or(f64::INFINITY))).collect())
    }

    /// The other workers of this machine training now: (worker id, device)
    /// of each running run whose worker process is alive and whose heartbeat
    /// is younger than `fresh`, less those started with `--max-runs` (they
    /// may stop before they get to runs queued now).
    pub async fn local_workers_training(&self, fresh: std::time::Duration) -> Result<Vec<(String, String)>> {
        let rows: Vec<(Option<String>, Option<String>, Option<f64>)> = sqlx::query_as(&format!(
            "SELECT worker, device, {} - heartbeat FROM runs WHERE status = 'running' ORDER BY id",
            self.dialect.now_unix
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(self.sql())?;
        Ok(rows
            .into_iter()
            .filter(|(_, _, age)| age.is_some_and(|a| a < fresh.as_secs_f64()))
            .filter_map(|(w, d, _)| Some((w?, d.unwrap_or_default())))
            .filter(|(w, _)| super::identity::worker_is_local_and_alive(w))
            .filter(|(w, _)| !super::identity::worker_has_max_runs(w))
            .collect())
    }

    /// Atomically takes the next run: interrupted runs first (they resume),
    /// then queued ones in submission order. One statement: SQLite's write
    /// lock serialises claims; on PostgreSQL the inner SELECT locks the row it
    /// picks and skips rows other claims have locked (`FOR UPDATE SKIP
    /// LOCKED`), so concurrent workers never take the same run nor wait on
    /// each other. The status check in the outer WHERE stays as a guard.
    pub async fn claim_next(&self, worker: &str, device: &str) -> Result<Option<ClaimedRun>> {
        let e = self.sql();
        let d = self.dialect;
        let row: Option<(i64, String, String, i64)> = sqlx::query_as(&format!(
            "UPDATE runs SET status = 'running', worker = $1, device = $2, heartbeat = {now_unix},
                 attempts = attempts + 1, error = NULL, started_at = COALESCE(started_at, {now_iso})
             WHERE id = (SELECT id FROM runs WHERE status IN ('interrupted', 'queued')
                         ORDER BY status = 'queued', id LIMIT 1{skip_locked})
               AND status IN ('interrupted', 'queued')
             RETURNING id, key, config_json, attempts",
            now_unix = d.now_unix,
            now_iso = d.now_iso,
            skip_locked = d.skip_locked,
        ))
        .bind(worker)
        .bind(device)
        .fetch_optional(&self.pool)
        .await
        .map_err(&e)?;
        let Some((id, key, config_json, attempts)) = row else { return Ok(None) };
        let name = self.run_name(id).await?;
        Ok(Some(ClaimedRun { id, key, config_json, name, attempts, worker: worker.to_owned() }))
    }

    /// A run's display name (from the first sweep that asked for it).
    pub(super) async fn run_name(&self, id: i64) -> Result<String> {
        let name: Option<String> =
            sqlx::query_scalar("SELECT name FROM sweep_runs WHERE run_id = $1 ORDER BY sweep_id LIMIT 1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await
                .map_err(self.sql())?;
        Ok(name.unwrap_or_else(|| format!("run {id}")))
    }

    /// `sweep cancel`: a queued or interrupted run is cancelled at once; a
    /// running one is asked to stop (its worker sees it with its next
    /// heartbeat, stops after the batch, checkpoints and records it
    /// cancelled). Returns the status it had, or why it cannot be cancelled.
    pub async fn cancel(&self, run_id: i64) -> Result<Status> {
        let e = self.sql();
        let mut tx = self.write_tx().await?;
        let status = self.status_in(&mut tx, run_id).await?.ok_or(StoreError::NoSuchRun { run_id })?;
        let sql = match status {
            Status::Running => "UPDATE runs SET cancel_requested = 1 WHERE id = $1",
            Status::Queued | Status::Interrupted => {
                status.apply(Event::Cancel).expect("queued and interrupted runs can be cancelled");
                "UPDATE runs SET status = 'cancelled', worker = NULL WHERE id = $1"
            }
            Status::Cancelled => {
                return Err(StoreError::NotCancellable {
                    run_id,
                    status: status.to_string(),
                    why: "it is cancelled already",
                })
            }
            Status::Done | Status::Failed | Status::Diverged => {
                return Err(StoreError::NotCancellable {
                    run_id,
                    status: status.to_string(),
                    why: "it is not queued or running",
                })
            }
        };
        sqlx::query(sql).bind(run_id).execute(&mut *tx).await.map_err(&e)?;
        tx.commit().await.map_err(&e)?;
        Ok(status)
    }

    /// Queues a failed, diverged or interrupted run again (`sweep retry`).
    /// With `from_scratch`, its epochs and checkpoint records are forgotten
    /// too (the files go with the worker's next clean-up), so it trains from
    /// epoch 1: the way out of a missing or corrupt checkpoint, and the only
    /// way to train a finished run again. Returns the status it had.
    pub async fn retry(&self, run_id: i64, from_scratch: bool) -> Result<Status> {
        let e = self.sql();
        let mut tx = self.write_tx().await?;
        let status = self.status_in(&mut tx, run_id).await?.ok_or(StoreError::NoSuchRun { run_id })?;
        let refuse = |why| Err(StoreError::NotRetryable { run_id, status: status.to_string(), why });
        match status {
            Status::Running => return refuse("its worker is training it; stop that worker first (Ctrl-C)"),
            Status::Done if !from_scratch => return refuse("it is finished; --from-scratch trains it again"),
            Status::Queued if !from_scratch => return refuse("it is queued already"),
            _ => {}
        }
        if from_scratch {
            for table in ["epochs", "checkpoints"] {
                sqlx::query(&format!("DELETE FROM {table} WHERE run_id = $1"))
                    .bind(run_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(&e)?;
            }
            sqlx::query(
                "UPDATE runs SET epochs_done = 0, step = 0, steps_per_epoch = NULL, best_epoch = NULL,
                     best_metric = NULL, best_confusion_json = NULL, train_seconds = 0, images_per_sec = NULL,
                     final_train_acc = NULL, final_test_acc = NULL, final_test_loss = NULL,
                     peak_memory_bytes = NULL, note = NULL, finished_at = NULL
                 WHERE id = $1",
            )
            .bind(run_id)
            .execute(&mut *tx)
            .await
            .map_err(&e)?;
        }
        sqlx::query("UPDATE runs SET status = 'queued', error = NULL, worker = NULL, worker_deaths = 0, death_epoch = NULL, death_step = NULL, cancel_requested = 0 WHERE id = $1")
            .bind(run_id)
            .execute(&mut *tx)
            .await
            .map_err(&e)?;
        tx.commit().await.map_err(&e)?;
        self.checkpoint_wal().await;
        Ok(status)
    }
}
