//! The queue and the records: the only module that speaks SQL.
//!
//! One SQLite file (`sweep.db` in the home folder) in WAL mode, opened through
//! sqlx; `migrations/` is embedded and applied on every open. Every change that
//! must be atomic (queueing a sweep; recording an epoch together with its
//! checkpoints) is one transaction, so a process killed at any moment leaves
//! either the old or the new state.
//!
//! One file per job: [`error`](StoreError), `rows` (what reads return),
//! `identity` (worker ids), `queue` (submitting, claiming, recovering,
//! heartbeats), `records` (epoch and checkpoint writes, run ends), `reads`
//! (everything `status`, `results` and `report` read), `raw` (the bulk read
//! through SQLite's C API), `remove` (`sweep rm`, and what `prune` and
//! `submit --rerun` read) and [`status`] (the run status machine).
//!
//! Workers identify themselves as `host:pid`. Writes about a running run check
//! that the writer still holds it, so a worker that was presumed dead cannot
//! overwrite the records of the worker that took its run over.

mod error;
mod identity;
mod queue;
mod raw;
mod reads;
mod records;
mod remove;
mod rows;
pub mod status;

pub use error::StoreError;
pub use identity::worker_id;
pub use rows::{ClaimedRun, Recovered, RunRow, SubmitOutcome, SweepRow};
pub use status::{Event, InvalidTransition, Status};

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The database file inside the home folder.
pub const DB_FILE: &str = "sweep.db";

/// Shorthand for results of this module.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The open database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
    home: PathBuf,
    db_path: PathBuf,
}

/// SQL for the current time as ISO 8601 text and as Unix seconds.
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

    fn parse_status(&self, s: &str) -> Result<Status> {
        s.parse().map_err(|detail| StoreError::Corrupt {
            path: self.db_path.clone(),
            what: "runs.status".into(),
            detail,
        })
    }

    /// A run's status inside a transaction (`None`: no such run).
    async fn status_in(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
        run_id: i64,
    ) -> Result<Option<Status>> {
        let s: Option<String> = sqlx::query_scalar("SELECT status FROM runs WHERE id = ?1")
            .bind(run_id)
            .fetch_optional(&mut **tx)
            .await
            .map_err(self.sql())?;
        s.map(|s| self.parse_status(&s)).transpose()
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
}
