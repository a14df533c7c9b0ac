//! The queue and the records: the only module that speaks SQL.
//!
//! One SQLite file (`sweep.db` in the home folder) in WAL mode, opened through
//! sqlx; `migrations/` is embedded and applied on every open. Every change that
//! must be atomic (queueing a sweep; recording an epoch together with its
//! checkpoints) is one transaction, so a process killed at any moment leaves
//! either the old or the new state.
//!
//! Workers identify themselves as `host:pid`. Writes about a running run check
//! that the writer still holds it, so a worker that was presumed dead cannot
//! overwrite the records of the worker that took its run over.

mod raw;
pub mod status;

pub use status::{Event, InvalidTransition, Status};

use crate::spec::{PlannedRun, Reference, SweepSpec};
use serde::{Deserialize, Serialize};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The database file inside the home folder.
pub const DB_FILE: &str = "sweep.db";

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite said no.
    #[error("database {path}: {source}")]
    Sql {
        /// The database file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: sqlx::Error,
    },
    /// The schema could not be brought up to date.
    #[error("database {path}: applying migrations failed: {source}")]
    Migrate {
        /// The database file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    /// The home folder could not be created.
    #[error("cannot create the home folder {path}: {source}")]
    Home {
        /// The folder.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Another worker holds the run now.
    #[error("run {run_id} is no longer held by this worker ({worker}); another worker took it over")]
    LostOwnership {
        /// The run.
        run_id: i64,
        /// This worker.
        worker: String,
    },
    /// SQLite refused a query or failed while running it.
    #[error("database {path}: {detail}")]
    Query {
        /// The database file.
        path: PathBuf,
        /// SQLite's message.
        detail: String,
    },
    /// A stored value does not parse.
    #[error("database {path}: corrupt value in {what}: {detail}")]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// Which value.
        what: String,
        /// Why it does not parse.
        detail: String,
    },
}

/// Shorthand for results of this module.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The open database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
    home: PathBuf,
    db_path: PathBuf,
}

/// What submitting one planned run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SubmitOutcome {
    /// New configuration, queued.
    Queued,
    /// Finished before (maybe by another sweep): not run again.
    AlreadyDone,
    /// Already waiting, running or interrupted: it will run (or resume) once.
    AlreadyQueued,
    /// Had failed; queued again.
    Requeued,
}

/// One finished epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 1-based epoch number.
    pub epoch: i64,
    /// Mean training loss over the epoch's batches.
    pub train_loss: f64,
    /// Training top-1 accuracy, percent.
    pub train_acc: f64,
    /// Mean test loss.
    pub test_loss: f64,
    /// Test top-1 accuracy, percent.
    pub test_acc: f64,
    /// Test top-5 accuracy, percent (absent in records of older versions).
    pub test_top5: Option<f64>,
    /// Validation loss (with `val_split`).
    pub val_loss: Option<f64>,
    /// Validation top-1 accuracy, percent (with `val_split`).
    pub val_acc: Option<f64>,
    /// Test confusion matrix (rows: true class, columns: predicted). Stored
    /// for the best epoch only (`Store::best_confusion`); never read back here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confusion: Option<Vec<Vec<u64>>>,
    /// Learning rate used in this epoch.
    pub lr: f64,
    /// Wall-clock seconds of the epoch (train + test).
    pub seconds: f64,
    /// Training images per second.
    pub images_per_sec: f64,
    /// The most memory used so far in the run, in bytes (see `train::device::PeakMemory`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_memory_bytes: Option<i64>,
}

impl EpochRecord {
    /// The value of one metric.
    pub fn metric(&self, m: crate::spec::Metric) -> f64 {
        use crate::spec::Metric::*;
        match m {
            TestAcc => self.test_acc,
            TestLoss => self.test_loss,
            TrainAcc => self.train_acc,
            TrainLoss => self.train_loss,
            ValAcc => self.val_acc.unwrap_or(f64::NAN),
            ValLoss => self.val_loss.unwrap_or(f64::NAN),
        }
    }
}

/// Which of a run's two checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckpointKind {
    /// The most recent one, to resume from.
    Latest,
    /// The one with the best metric so far.
    Best,
}

impl CheckpointKind {
    fn as_str(self) -> &'static str {
        match self {
            CheckpointKind::Latest => "latest",
            CheckpointKind::Best => "best",
        }
    }
}

/// A checkpoint as recorded: files relative to the home folder, with checksums.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointRecord {
    /// Latest or best.
    pub kind: CheckpointKind,
    /// Finished epochs at the time of the checkpoint.
    pub epoch: i64,
    /// Batches done in the next epoch (non-zero only for a mid-epoch checkpoint).
    pub step: i64,
    /// The weights (safetensors, torchvision names).
    pub path: String,
    /// SHA-256 of the weights file.
    pub sha256: String,
    /// The trainer state (optimizer buffers, position; safetensors).
    pub state_path: String,
    /// SHA-256 of the state file.
    pub state_sha256: String,
    /// The selection metric at that epoch.
    pub metric: Option<f64>,
}

/// A run handed to a worker.
#[derive(Debug, Clone)]
pub struct ClaimedRun {
    /// Database id.
    pub id: i64,
    /// Configuration hash.
    pub key: String,
    /// The configuration (JSON of [`crate::spec::RunConfig`]).
    pub config_json: String,
    /// Display name (from the first sweep that asked for it).
    pub name: String,
    /// How many times it has been claimed, this time included.
    pub attempts: i64,
}

/// A run with its summary numbers, as `status`, `results` and `report` show it.
#[derive(Debug, Clone, Serialize)]
pub struct RunRow {
    /// Database id.
    pub id: i64,
    /// Configuration hash.
    pub key: String,
    /// Sweep it is shown under.
    pub sweep: String,
    /// Name within that sweep.
    pub name: String,
    /// The configuration as JSON text.
    #[serde(skip)]
    pub config_json: String,
    /// Current status.
    pub status: Status,
    /// Epochs asked for.
    pub epochs_total: i64,
    /// Epochs finished.
    pub epochs_done: i64,
    /// Batches done in the current epoch.
    pub step: i64,
    /// Batches per epoch, once known.
    pub steps_per_epoch: Option<i64>,
    /// Times claimed.
    pub attempts: i64,
    /// The worker holding it.
    pub worker: Option<String>,
    /// Seconds since its worker's last heartbeat.
    pub heartbeat_age: Option<f64>,
    /// Device it trained on.
    pub device: Option<String>,
    /// Error text of a failed run.
    pub error: Option<String>,
    /// Metric that defines best.
    pub metric: String,
    /// Best epoch so far.
    pub best_epoch: Option<i64>,
    /// Best metric value so far.
    pub best_metric: Option<f64>,
    /// Last epoch's training accuracy.
    pub final_train_acc: Option<f64>,
    /// Last epoch's test accuracy.
    pub final_test_acc: Option<f64>,
    /// Last epoch's test loss.
    pub final_test_loss: Option<f64>,
    /// Mean training images per second over its epochs.
    pub images_per_sec: Option<f64>,
    /// Seconds spent training.
    pub train_seconds: f64,
    /// How the run ended, when there is something to say (e.g. stopped early).
    pub note: Option<String>,
    /// The dataset's class names, once the run has started.
    pub classes: Option<Vec<String>>,
    /// Published numbers to compare with.
    pub reference: Option<Reference>,
    /// The most memory the run used, in bytes (GPU memory on a GPU, peak RSS on the CPU).
    pub peak_memory_bytes: Option<i64>,
}

/// A sweep as stored.
#[derive(Debug, Clone, Serialize)]
pub struct SweepRow {
    /// Database id.
    pub id: i64,
    /// Name.
    pub name: String,
    /// Free text.
    pub description: Option<String>,
    /// The file it was submitted from.
    pub source_path: String,
    /// Selection metric.
    pub metric: String,
    /// maximize or minimize.
    pub goal: String,
}

/// This process's worker id: `host:pid`.
pub fn worker_id() -> String {
    format!("{}:{}", hostname(), std::process::id())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// Whether the worker `host:pid` is known to be dead (same host, no such process).
fn worker_is_dead(worker: &str) -> bool {
    let Some((host, pid)) = worker.rsplit_once(':') else { return false };
    if host != hostname() || !Path::new("/proc/self").exists() {
        return false;
    }
    pid.parse::<u32>().is_ok_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
}

const NOW_ISO: &str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";
const NOW_UNIX: &str = "((julianday('now') - 2440587.5) * 86400.0)";

impl Store {
    /// Opens (creating if needed) the database in `home` and applies migrations.
    pub async fn open(home: &Path) -> Result<Store> {
        std::fs::create_dir_all(home).map_err(|source| StoreError::Home { path: home.to_owned(), source })?;
        let db_path = home.join(DB_FILE);
        let options = SqliteConnectOptions::new()
            .filename(&db_path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // NORMAL is durable against process crashes (kill -9) in WAL mode;
            // only a power cut can lose the last transactions, never corrupt.
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(30))
            .pragma("mmap_size", "268435456");
        // Migrations run on their own connection with foreign keys off: a
        // migration that rebuilds a table (SQLite's way to change a constraint)
        // drops the old one, which would otherwise cascade into its children.
        // Each migration is one transaction; it checks the keys itself.
        {
            use sqlx::Connection;
            let mut conn = sqlx::SqliteConnection::connect_with(&options.clone().foreign_keys(false))
                .await
                .map_err(|source| StoreError::Sql { path: db_path.clone(), source })?;
            sqlx::migrate!("./migrations")
                .run(&mut conn)
                .await
                .map_err(|source| StoreError::Migrate { path: db_path.clone(), source })?;
            conn.close().await.map_err(|source| StoreError::Sql { path: db_path.clone(), source })?;
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(|source| StoreError::Sql { path: db_path.clone(), source })?;
        Ok(Store { pool, home: home.to_owned(), db_path })
    }

    /// The home folder.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// The database file.
    pub fn db_path(&self) -> &Path {
        &self.db_path
    }

    /// Closes the pool (checkpoints the WAL).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    fn sql(&self) -> impl Fn(sqlx::Error) -> StoreError + '_ {
        move |source| StoreError::Sql { path: self.db_path.clone(), source }
    }

    /// Records a sweep and queues its runs, in one transaction. Finished
    /// configurations are not queued again; failed ones are.
    pub async fn submit(&self, spec: &SweepSpec) -> Result<Vec<SubmitOutcome>> {
        let e = self.sql();
        let mut tx = self.write_tx().await?;
        let sweep_id: i64 = sqlx::query_scalar(&format!(
            "INSERT INTO sweeps (name, description, source_path, source_toml, metric, goal)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (name) DO UPDATE SET description = ?2, source_path = ?3, source_toml = ?4,
                 metric = ?5, goal = ?6, updated_at = {NOW_ISO}
             RETURNING id"
        ))
        .bind(&spec.name)
        .bind(&spec.description)
        .bind(spec.path.display().to_string())
        .bind(&spec.text)
        .bind(spec.metric.as_str())
        .bind(spec.metric.goal())
        .fetch_one(&mut *tx)
        .await
        .map_err(&e)?;
        let mut outcomes = Vec::with_capacity(spec.runs.len());
        for (position, run) in spec.runs.iter().enumerate() {
            outcomes.push(self.submit_run(&mut tx, sweep_id, position as i64, run).await?);
        }
        tx.commit().await.map_err(&e)?;
        Ok(outcomes)
    }

    async fn submit_run(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
        sweep_id: i64,
        position: i64,
        run: &PlannedRun,
    ) -> Result<SubmitOutcome> {
        let e = self.sql();
        let config_json = serde_json::to_string(&run.config).expect("RunConfig serialises");
        let existing: Option<(i64, String)> = sqlx::query_as("SELECT id, status FROM runs WHERE key = ?1")
            .bind(&run.key.0)
            .fetch_optional(&mut **tx)
            .await
            .map_err(&e)?;
        let (run_id, outcome) = match existing {
            None => {
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO runs (key, config_json, epochs_total) VALUES (?1, ?2, ?3) RETURNING id",
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
                    Status::Failed | Status::Diverged => {
                        status.apply(Event::Requeue).expect("failed and diverged runs can be requeued");
                        sqlx::query("UPDATE runs SET status = 'queued', error = NULL, worker = NULL WHERE id = ?1")
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
            "INSERT INTO sweep_runs (sweep_id, run_id, name, position, reference_json) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (sweep_id, run_id) DO UPDATE SET name = ?3, position = ?4, reference_json = ?5",
        )
        .bind(sweep_id)
        .bind(run_id)
        .bind(&run.name)
        .bind(position)
        .bind(reference)
        .execute(&mut **tx)
        .await
        .map_err(&e)?;
        Ok(outcome)
    }

    fn parse_status(&self, s: &str) -> Result<Status> {
        s.parse().map_err(|detail| StoreError::Corrupt {
            path: self.db_path.clone(),
            what: "runs.status".into(),
            detail,
        })
    }

    /// Marks `running` runs whose worker is gone as `interrupted`, so that they
    /// resume: the worker is on this host and its process no longer exists, or
    /// its heartbeat is older than `stale_after`. Returns (id, worker) of each.
    pub async fn recover_stale(&self, stale_after: Duration) -> Result<Vec<(i64, String)>> {
        let e = self.sql();
        let rows: Vec<(i64, Option<String>, Option<f64>)> =
            sqlx::query_as(&format!("SELECT id, worker, {NOW_UNIX} - heartbeat FROM runs WHERE status = 'running'"))
                .fetch_all(&self.pool)
                .await
                .map_err(&e)?;
        let mut recovered = Vec::new();
        for (id, worker, age) in rows {
            let worker = worker.unwrap_or_default();
            let stale = age.is_none_or(|a| a > stale_after.as_secs_f64());
            if stale || worker_is_dead(&worker) {
                let done = sqlx::query(
                    "UPDATE runs SET status = 'interrupted', worker = NULL WHERE id = ?1 AND status = 'running' AND worker IS ?2",
                )
                .bind(id)
                .bind(&worker)
                .execute(&self.pool)
                .await
                .map_err(&e)?;
                if done.rows_affected() == 1 {
                    recovered.push((id, worker));
                }
            }
        }
        Ok(recovered)
    }

    /// Atomically takes the next run: interrupted runs first (they resume),
    /// then queued ones in submission order.
    pub async fn claim_next(&self, worker: &str, device: &str) -> Result<Option<ClaimedRun>> {
        let e = self.sql();
        let row = sqlx::query(&format!(
            "UPDATE runs SET status = 'running', worker = ?1, device = ?2, heartbeat = {NOW_UNIX},
                 attempts = attempts + 1, error = NULL, started_at = COALESCE(started_at, {NOW_ISO})
             WHERE id = (SELECT id FROM runs WHERE status IN ('interrupted', 'queued')
                         ORDER BY status = 'queued', id LIMIT 1)
               AND status IN ('interrupted', 'queued')
             RETURNING id, key, config_json, attempts"
        ))
        .bind(worker)
        .bind(device)
        .fetch_optional(&self.pool)
        .await
        .map_err(&e)?;
        let Some(row) = row else { return Ok(None) };
        let id: i64 = row.get("id");
        let name: String =
            sqlx::query_scalar("SELECT name FROM sweep_runs WHERE run_id = ?1 ORDER BY sweep_id LIMIT 1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await
                .map_err(&e)?
                .unwrap_or_else(|| format!("run {id}"));
        Ok(Some(ClaimedRun {
            id,
            key: row.get("key"),
            config_json: row.get("config_json"),
            name,
            attempts: row.get("attempts"),
        }))
    }

    /// Refreshes the holder's heartbeat and progress. Fails if another worker holds the run.
    pub async fn heartbeat(&self, run_id: i64, worker: &str, step: i64, steps_per_epoch: i64) -> Result<()> {
        let done = sqlx::query(&format!(
            "UPDATE runs SET heartbeat = {NOW_UNIX}, step = ?3, steps_per_epoch = ?4
             WHERE id = ?1 AND worker = ?2 AND status = 'running'"
        ))
        .bind(run_id)
        .bind(worker)
        .bind(step)
        .bind(steps_per_epoch)
        .execute(&self.pool)
        .await
        .map_err(self.sql())?;
        if done.rows_affected() == 0 {
            return Err(StoreError::LostOwnership { run_id, worker: worker.to_owned() });
        }
        Ok(())
    }

    /// A write transaction. It starts with BEGIN IMMEDIATE: SQLite's write lock
    /// is taken up front and waited for (busy timeout). A deferred transaction
    /// that reads and then writes gets SQLITE_BUSY at once when another
    /// connection holds the lock, e.g. a failed transaction whose rollback the
    /// pool has not run yet.
    async fn write_tx(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
        self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(self.sql())
    }

    /// A write transaction on a run that `worker` must still hold (running).
    async fn held_tx(&self, run_id: i64, worker: &str) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
        let mut tx = self.write_tx().await?;
        let held: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM runs WHERE id = ?1 AND worker = ?2 AND status = 'running'")
                .bind(run_id)
                .bind(worker)
                .fetch_optional(&mut *tx)
                .await
                .map_err(self.sql())?;
        if held.is_none() {
            return Err(StoreError::LostOwnership { run_id, worker: worker.to_owned() });
        }
        Ok(tx)
    }

    async fn put_checkpoint(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
        run_id: i64,
        c: &CheckpointRecord,
    ) -> Result<()> {
        sqlx::query(
            "INSERT OR REPLACE INTO checkpoints (run_id, kind, epoch, step, path, sha256, state_path, state_sha256, metric)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )
        .bind(run_id)
        .bind(c.kind.as_str())
        .bind(c.epoch)
        .bind(c.step)
        .bind(&c.path)
        .bind(&c.sha256)
        .bind(&c.state_path)
        .bind(&c.state_sha256)
        .bind(c.metric)
        .execute(&mut **tx)
        .await
        .map_err(self.sql())?;
        Ok(())
    }

    /// Records a finished epoch with its latest checkpoint and, if the metric
    /// improved, its best checkpoint, in one transaction.
    pub async fn record_epoch(
        &self,
        run_id: i64,
        worker: &str,
        rec: &EpochRecord,
        latest: &CheckpointRecord,
        best: Option<&CheckpointRecord>,
    ) -> Result<()> {
        let e = self.sql();
        let mut tx = self.held_tx(run_id, worker).await?;
        sqlx::query(
            "INSERT INTO epochs (run_id, epoch, train_loss, train_acc, test_loss, test_acc, lr, seconds, images_per_sec,
                                 test_top5, val_loss, val_acc, peak_memory_bytes)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        )
        .bind(run_id)
        .bind(rec.epoch)
        .bind(rec.train_loss)
        .bind(rec.train_acc)
        .bind(rec.test_loss)
        .bind(rec.test_acc)
        .bind(rec.lr)
        .bind(rec.seconds)
        .bind(rec.images_per_sec)
        .bind(rec.test_top5)
        .bind(rec.val_loss)
        .bind(rec.val_acc)
        .bind(rec.peak_memory_bytes)
        .execute(&mut *tx)
        .await
        .map_err(&e)?;
        self.put_checkpoint(&mut tx, run_id, latest).await?;
        if let Some(best) = best {
            self.put_checkpoint(&mut tx, run_id, best).await?;
            let confusion = rec.confusion.as_ref().map(|c| serde_json::to_string(c).expect("serialisable"));
            sqlx::query("UPDATE runs SET best_epoch = ?2, best_metric = ?3, best_confusion_json = ?4 WHERE id = ?1")
                .bind(run_id)
                .bind(best.epoch)
                .bind(best.metric)
                .bind(confusion)
                .execute(&mut *tx)
                .await
                .map_err(&e)?;
        }
        sqlx::query(&format!(
            "UPDATE runs SET epochs_done = ?2, step = 0, train_seconds = train_seconds + ?3, heartbeat = {NOW_UNIX},
                             images_per_sec = (SELECT avg(images_per_sec) FROM epochs e WHERE e.run_id = ?1),
                             final_train_acc = ?4, final_test_acc = ?5, final_test_loss = ?6,
                             peak_memory_bytes = CASE WHEN ?7 IS NULL THEN peak_memory_bytes
                                                      ELSE max(coalesce(peak_memory_bytes, 0), ?7) END
             WHERE id = ?1"
        ))
        .bind(run_id)
        .bind(rec.epoch)
        .bind(rec.seconds)
        .bind(rec.train_acc)
        .bind(rec.test_acc)
        .bind(rec.test_loss)
        .bind(rec.peak_memory_bytes)
        .execute(&mut *tx)
        .await
        .map_err(&e)?;
        tx.commit().await.map_err(&e)?;
        Ok(())
    }

    /// Marks a run interrupted, recording the mid-epoch checkpoint if one was saved.
    pub async fn record_interrupt(&self, run_id: i64, worker: &str, latest: Option<&CheckpointRecord>) -> Result<()> {
        let e = self.sql();
        let mut tx = self.held_tx(run_id, worker).await?;
        if let Some(latest) = latest {
            self.put_checkpoint(&mut tx, run_id, latest).await?;
            sqlx::query("UPDATE runs SET step = ?2 WHERE id = ?1")
                .bind(run_id)
                .bind(latest.step)
                .execute(&mut *tx)
                .await
                .map_err(&e)?;
        }
        sqlx::query("UPDATE runs SET status = 'interrupted', worker = NULL WHERE id = ?1")
            .bind(run_id)
            .execute(&mut *tx)
            .await
            .map_err(&e)?;
        tx.commit().await.map_err(&e)?;
        Ok(())
    }

    /// Ends a run as done or failed.
    pub async fn finish(&self, run_id: i64, worker: &str, status: Status, error: Option<&str>) -> Result<()> {
        debug_assert!(matches!(status, Status::Done | Status::Failed | Status::Diverged));
        let e = self.sql();
        let mut tx = self.held_tx(run_id, worker).await?;
        sqlx::query(&format!(
            "UPDATE runs SET status = ?2, error = ?3, worker = NULL, finished_at = {NOW_ISO} WHERE id = ?1"
        ))
        .bind(run_id)
        .bind(status.as_str())
        .bind(error)
        .execute(&mut *tx)
        .await
        .map_err(&e)?;
        tx.commit().await.map_err(&e)?;
        Ok(())
    }

    /// The test confusion matrix of a run's best epoch (rows: true class,
    /// columns: predicted), if recorded.
    pub async fn best_confusion(&self, run_id: i64) -> Result<Option<Vec<Vec<u64>>>> {
        let json: Option<String> = sqlx::query_scalar("SELECT best_confusion_json FROM runs WHERE id = ?1")
            .bind(run_id)
            .fetch_one(&self.pool)
            .await
            .map_err(self.sql())?;
        Ok(json.and_then(|j| serde_json::from_str(&j).ok()))
    }

    /// Forgets a run's latest checkpoint (retention `keep = "best"` once the
    /// run is finished); its files are then removed as unreferenced.
    pub async fn drop_latest(&self, run_id: i64, worker: &str) -> Result<()> {
        let e = self.sql();
        let mut tx = self.held_tx(run_id, worker).await?;
        sqlx::query("DELETE FROM checkpoints WHERE run_id = ?1 AND kind = 'latest'")
            .bind(run_id)
            .execute(&mut *tx)
            .await
            .map_err(&e)?;
        tx.commit().await.map_err(&e)?;
        Ok(())
    }

    /// Records how a run ended (shown with the run), if this worker holds it.
    pub async fn set_note(&self, run_id: i64, worker: &str, note: &str) -> Result<()> {
        self.set_held_text(run_id, worker, "UPDATE runs SET note = ?2 WHERE id = ?1", note).await
    }

    /// Records the class names of the run's dataset (label order).
    pub async fn set_classes(&self, run_id: i64, worker: &str, classes: &[String]) -> Result<()> {
        let json = serde_json::to_string(classes).expect("serialisable");
        self.set_held_text(run_id, worker, "UPDATE runs SET classes_json = ?2 WHERE id = ?1", &json).await
    }

    /// Runs `sql` (binding the run id and `value`) if this worker holds the run.
    async fn set_held_text(&self, run_id: i64, worker: &str, sql: &'static str, value: &str) -> Result<()> {
        let e = self.sql();
        let mut tx = self.held_tx(run_id, worker).await?;
        sqlx::query(sql).bind(run_id).bind(value).execute(&mut *tx).await.map_err(&e)?;
        tx.commit().await.map_err(&e)?;
        Ok(())
    }

    /// A run's checkpoints (latest and/or best).
    pub async fn checkpoints(&self, run_id: i64) -> Result<Vec<CheckpointRecord>> {
        let rows = sqlx::query(
            "SELECT kind, epoch, step, path, sha256, state_path, state_sha256, metric FROM checkpoints WHERE run_id = ?1 ORDER BY kind",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await
        .map_err(self.sql())?;
        rows.into_iter()
            .map(|r| {
                let kind: String = r.get("kind");
                let kind = match kind.as_str() {
                    "latest" => CheckpointKind::Latest,
                    "best" => CheckpointKind::Best,
                    other => {
                        return Err(StoreError::Corrupt {
                            path: self.db_path.clone(),
                            what: "checkpoints.kind".into(),
                            detail: other.to_owned(),
                        })
                    }
                };
                Ok(CheckpointRecord {
                    kind,
                    epoch: r.get("epoch"),
                    step: r.get("step"),
                    path: r.get("path"),
                    sha256: r.get("sha256"),
                    state_path: r.get("state_path"),
                    state_sha256: r.get("state_sha256"),
                    metric: r.get("metric"),
                })
            })
            .collect()
    }

    /// A run's recorded epochs, in order.
    pub async fn epochs(&self, run_id: i64) -> Result<Vec<EpochRecord>> {
        let rows = sqlx::query(
            "SELECT epoch, train_loss, train_acc, test_loss, test_acc, lr, seconds, images_per_sec, test_top5, peak_memory_bytes,
                    val_loss, val_acc
             FROM epochs WHERE run_id = ?1 ORDER BY epoch",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await
        .map_err(self.sql())?;
        Ok(rows
            .into_iter()
            .map(|r| EpochRecord {
                epoch: r.get("epoch"),
                train_loss: r.get("train_loss"),
                train_acc: r.get("train_acc"),
                test_loss: r.get("test_loss"),
                test_acc: r.get("test_acc"),
                lr: r.get("lr"),
                seconds: r.get("seconds"),
                images_per_sec: r.get("images_per_sec"),
                test_top5: r.get("test_top5"),
                val_loss: r.get("val_loss"),
                val_acc: r.get("val_acc"),
                confusion: None,
                peak_memory_bytes: r.get("peak_memory_bytes"),
            })
            .collect())
    }

    /// Stored sweeps, oldest first.
    pub async fn sweeps(&self) -> Result<Vec<SweepRow>> {
        let rows = sqlx::query("SELECT id, name, description, source_path, metric, goal FROM sweeps ORDER BY id")
            .fetch_all(&self.pool)
            .await
            .map_err(self.sql())?;
        Ok(rows
            .into_iter()
            .map(|r| SweepRow {
                id: r.get("id"),
                name: r.get("name"),
                description: r.get("description"),
                source_path: r.get("source_path"),
                metric: r.get("metric"),
                goal: r.get("goal"),
            })
            .collect())
    }

    /// Runs with their summaries: those of one sweep (in its order), or every
    /// run once (under the first sweep that asked for it).
    pub async fn runs(&self, sweep: Option<&str>) -> Result<Vec<RunRow>> {
        let mut out = Vec::new();
        self.each_run(sweep, |r| out.push(r)).await?;
        Ok(out)
    }

    /// [`Store::runs`], handing each run to `each` as it is read.
    pub async fn each_run(&self, sweep: Option<&str>, mut each: impl FnMut(RunRow)) -> Result<()> {
        // One query per case, each walking an index in the order shown (no sort
        // step), stepped on this thread (see `raw`: through sqlx's channel the
        // rows of a 10,000-run sweep took ten times what SQLite took).
        let cols = format!(
            "r.config_json, r.id, r.key, s.name, sr.name, r.status, r.epochs_total,
             r.epochs_done, r.step, r.steps_per_epoch, r.attempts, r.worker,
             {NOW_UNIX} - r.heartbeat, r.device, r.error, s.metric,
             r.best_epoch, r.best_metric, r.train_seconds, sr.reference_json,
             r.final_train_acc, r.final_test_acc, r.final_test_loss, r.images_per_sec, r.note, r.classes_json,
             r.peak_memory_bytes"
        );
        let from = "FROM sweep_runs sr
             JOIN runs r ON r.id = sr.run_id
             JOIN sweeps s ON s.id = sr.sweep_id";
        let sql = if sweep.is_some() {
            format!(
                "SELECT {cols} {from}
                 WHERE sr.sweep_id = (SELECT id FROM sweeps WHERE name = ?1)
                 ORDER BY sr.sweep_id, sr.position"
            )
        } else {
            // Every run once, under the first sweep that asked for it.
            format!(
                "SELECT {cols} {from}
                 WHERE ?1 IS NULL AND sr.sweep_id = (SELECT MIN(sweep_id) FROM sweep_runs x WHERE x.run_id = r.id)
                 ORDER BY sr.sweep_id, sr.position"
            )
        };
        // Runs of one dataset share their class names: parsed once per distinct text.
        let mut last_classes: Option<(String, Vec<String>)> = None;
        let need = |v: Option<&str>, col: &str| v.map(str::to_owned).ok_or_else(|| format!("{col} is NULL"));
        let need_int = |v: Option<i64>, col: &str| v.ok_or_else(|| format!("{col} is NULL"));
        raw::each_row(&self.pool, &sql, sweep, |row| {
            let classes = match row.text(25)? {
                None => None,
                Some(text) => {
                    if last_classes.as_ref().is_none_or(|(t, _)| t != text) {
                        let parsed: Vec<String> =
                            serde_json::from_str(text).map_err(|e| format!("runs.classes_json: {e}"))?;
                        last_classes = Some((text.to_owned(), parsed));
                    }
                    last_classes.as_ref().map(|(_, c)| c.clone())
                }
            };
            let reference = match row.text(19)? {
                None => None,
                Some(text) => Some(serde_json::from_str(text).map_err(|e| format!("sweep_runs.reference_json: {e}"))?),
            };
            let status = row.text(5)?.unwrap_or("");
            each(RunRow {
                config_json: need(row.text(0)?, "runs.config_json")?,
                id: need_int(row.int(1), "runs.id")?,
                key: need(row.text(2)?, "runs.key")?,
                sweep: need(row.text(3)?, "sweeps.name")?,
                name: need(row.text(4)?, "sweep_runs.name")?,
                status: status.parse().map_err(|e| format!("runs.status: {e}"))?,
                epochs_total: need_int(row.int(6), "runs.epochs_total")?,
                epochs_done: need_int(row.int(7), "runs.epochs_done")?,
                step: need_int(row.int(8), "runs.step")?,
                steps_per_epoch: row.int(9),
                attempts: need_int(row.int(10), "runs.attempts")?,
                worker: row.text(11)?.map(str::to_owned),
                heartbeat_age: row.real(12),
                device: row.text(13)?.map(str::to_owned),
                error: row.text(14)?.map(str::to_owned),
                metric: need(row.text(15)?, "sweeps.metric")?,
                best_epoch: row.int(16),
                best_metric: row.real(17),
                train_seconds: row.real(18).unwrap_or(0.0),
                reference,
                final_train_acc: row.real(20),
                final_test_acc: row.real(21),
                final_test_loss: row.real(22),
                images_per_sec: row.real(23),
                note: row.text(24)?.map(str::to_owned),
                classes,
                peak_memory_bytes: row.int(26),
            });
            Ok(())
        })
        .await
        .map_err(|e| match e {
            raw::RawError::Sqlx(source) => StoreError::Sql { path: self.db_path.clone(), source },
            raw::RawError::Sqlite(detail) => StoreError::Query { path: self.db_path.clone(), detail },
            raw::RawError::Row(detail) => {
                StoreError::Corrupt { path: self.db_path.clone(), what: "a run's row".into(), detail }
            }
        })
    }

    /// Whether a sweep of this name exists.
    pub async fn sweep_exists(&self, name: &str) -> Result<bool> {
        let found: Option<i64> = sqlx::query_scalar("SELECT id FROM sweeps WHERE name = ?1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(self.sql())?;
        Ok(found.is_some())
    }
}
