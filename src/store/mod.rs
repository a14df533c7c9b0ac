//! The queue and the records: the only module that speaks SQL.
//!
//! Two backends behind one API, through sqlx's `Any` driver: one SQLite file
//! (`sweep.db` in the home folder, WAL mode; the default) or a PostgreSQL
//! database (`--store postgres://...`, for many machines). Each has its own
//! embedded migrations (`migrations/`, `migrations/postgres/`) giving the
//! same tables and the same documented views; the SQL that differs between
//! the two (clock, locking, the claim) is in `dialect`, everything else is
//! written once. Every change that must be atomic (queueing a sweep;
//! recording an epoch together with its checkpoints) is one transaction, so a
//! process killed at any moment leaves either the old or the new state.
//!
//! One file per job: [`error`](StoreError), `location` (which database),
//! `dialect` (the SQL that differs), `rows` (what reads return), `identity`
//! (worker ids), `queue` (submitting, claiming, recovering), `lease`
//! (heartbeats and the fencing of writes about a held run), `records` (epoch
//! and checkpoint writes, run ends), `reads` (everything `status`, `results`
//! and `report` read), `raw` (SQLite's bulk read through its C API), `remove`
//! (`sweep rm`, and what `prune` and `submit --rerun` read), `copy` (`sweep
//! store copy`) and [`status`] (the run status machine).
//!
//! Workers identify themselves as `host:pid`. A claim hands the worker a
//! [`Lease`] (run, worker, attempt); every write about a running run carries
//! it and is refused once another worker (or another attempt) holds the run,
//! so a worker that was presumed dead cannot overwrite the records of the
//! worker that took its run over.

mod copy;
mod dialect;
mod error;
mod identity;
mod lease;
mod location;
mod network_fs;
mod queue;
mod raw;
mod reads;
mod records;
mod remove;
mod rows;
mod search;
pub mod status;

pub use copy::CopyReport;
pub use error::StoreError;
pub use identity::worker_id;
pub use lease::Lease;
pub use location::{Backend, Location};
pub use rows::{ClaimedRun, Recovered, RunRow, SubmitOutcome, SweepRow};
pub use search::{AshaContext, NewTrial, SearchSweep};
pub use status::{Event, InvalidTransition, Status};

use dialect::Dialect;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{AnyPool, Executor, SqlitePool};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The database file inside the home folder.
pub const DB_FILE: &str = "sweep.db";

/// Shorthand for results of this module.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A transaction on either backend.
type Tx = sqlx::Transaction<'static, sqlx::Any>;

/// The open database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    /// SQLite only: a native pool for the bulk read (`raw`).
    raw: Option<SqlitePool>,
    dialect: &'static Dialect,
    home: PathBuf,
    /// The database as messages name it (a file, or a URL without its password).
    name: String,
    /// SQLite only: its file.
    sqlite_path: Option<PathBuf>,
}

/// SQLite's settings on every connection: WAL; NORMAL is durable against
/// process crashes (kill -9) in WAL mode, only a power cut can lose the last
/// transactions, never corrupt.
const SQLITE_PRAGMAS: &str = "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; \
                              PRAGMA busy_timeout = 30000; PRAGMA mmap_size = 268435456;";

/// The migrating connection to a SQLite file. A new file's first connections
/// switch it to WAL, which takes an exclusive lock that SQLite's busy timeout
/// does not wait for: a process that loses that race gets "database is
/// locked" at once. It tries again for as long as the busy timeout would
/// have waited.
async fn connect_new_sqlite(
    options: &SqliteConnectOptions,
) -> std::result::Result<sqlx::SqliteConnection, sqlx::Error> {
    use sqlx::Connection;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut pause = Duration::from_millis(5);
    loop {
        match sqlx::SqliteConnection::connect_with(options).await {
            Err(sqlx::Error::Database(e))
                if std::time::Instant::now() < deadline
                    && e.code().and_then(|c| c.parse::<i32>().ok()).is_some_and(|c| c & 0xff == 5) =>
            {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(200));
            }
            result => return result,
        }
    }
}

impl Store {
    /// Opens (creating if needed) the SQLite database in `home` and applies migrations.
    pub async fn open(home: &Path) -> Result<Store> {
        Store::connect(home, &Location::default_in(home)).await
    }

    /// Opens the database at `location` (creating a SQLite file if needed),
    /// applies its migrations, and keeps `home` for run folders and logs.
    pub async fn connect(home: &Path, location: &Location) -> Result<Store> {
        std::fs::create_dir_all(home).map_err(|source| StoreError::Home { path: home.to_owned(), source })?;
        sqlx::any::install_default_drivers();
        let name = location.display_name();
        let sql = |source| StoreError::Sql { db: name.clone(), source };
        let mut sqlite_path = None;
        let (pool, raw, dialect) = match location {
            Location::Sqlite(path) => {
                sqlite_path = Some(path.clone());
                if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    std::fs::create_dir_all(parent)
                        .map_err(|source| StoreError::Home { path: parent.to_owned(), source })?;
                }
                let options = SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .foreign_keys(true)
                    .busy_timeout(Duration::from_secs(30))
                    .pragma("mmap_size", "268435456");
                // Migrations run on their own connection with foreign keys off: a
                // migration that rebuilds a table (SQLite's way to change a constraint)
                // drops the old one, which would otherwise cascade into its children.
                // Each migration is one transaction; it checks the keys itself.
                // sqlx takes no lock on SQLite, so processes opening a new file
                // together would each apply migration 1 and all but one fail on
                // "table already exists". The whole run is one IMMEDIATE
                // transaction (each migration a savepoint in it): it holds the
                // write lock from the start, so the others wait (busy_timeout),
                // then find every migration applied.
                {
                    use sqlx::Connection;
                    let mut conn = connect_new_sqlite(&options.clone().foreign_keys(false)).await.map_err(sql)?;
                    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.map_err(sql)?;
                    sqlx::migrate!("./migrations")
                        .run(&mut *tx)
                        .await
                        .map_err(|source| StoreError::Migrate { db: name.clone(), source })?;
                    tx.commit().await.map_err(sql)?;
                    conn.close().await.map_err(sql)?;
                }
                let raw = SqlitePoolOptions::new().max_connections(1).connect_with(options).await.map_err(sql)?;
                let pool = AnyPoolOptions::new()
                    .max_connections(4)
                    .after_connect(|conn, _| Box::pin(async move { conn.execute(SQLITE_PRAGMAS).await.map(|_| ()) }))
                    .connect(&location.url())
                    .await
                    .map_err(sql)?;
                (pool, Some(raw), &dialect::SQLITE)
            }
            Location::Postgres(url) => {
                {
                    use sqlx::Connection;
                    let mut conn = sqlx::PgConnection::connect(url).await.map_err(sql)?;
                    // sqlx takes an advisory lock: workers starting together migrate once.
                    sqlx::migrate!("./migrations/postgres")
                        .run(&mut conn)
                        .await
                        .map_err(|source| StoreError::Migrate { db: name.clone(), source })?;
                    conn.close().await.map_err(sql)?;
                }
                let pool = AnyPoolOptions::new()
                    .max_connections(4)
                    .acquire_timeout(Duration::from_secs(60))
                    .connect(url)
                    .await
                    .map_err(sql)?;
                (pool, None, &dialect::POSTGRES)
            }
        };
        Ok(Store { pool, raw, dialect, home: home.to_owned(), name, sqlite_path })
    }

    /// The database as messages name it (a file, or a URL without its password).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A SQLite file on a network filesystem: its type (`nfs4`). SQLite's
    /// write-ahead log works only for processes on one machine, so workers on
    /// several machines need PostgreSQL.
    pub fn sqlite_on_network_fs(&self) -> Option<String> {
        network_fs::network_filesystem(self.sqlite_path.as_deref()?)
    }

    /// The home folder (run folders and logs).
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// Closes the pool (checkpoints SQLite's WAL).
    pub async fn close(&self) {
        self.pool.close().await;
        if let Some(raw) = &self.raw {
            raw.close().await;
        }
    }

    fn sql(&self) -> impl Fn(sqlx::Error) -> StoreError + '_ {
        move |source| StoreError::Sql { db: self.name.clone(), source }
    }

    fn corrupt(&self, what: &str, detail: String) -> StoreError {
        StoreError::Corrupt { db: self.name.clone(), what: what.into(), detail }
    }

    fn parse_status(&self, s: &str) -> Result<Status> {
        s.parse().map_err(|detail| self.corrupt("runs.status", detail))
    }

    /// A run's status inside a transaction (`None`: no such run).
    async fn status_in(&self, tx: &mut Tx, run_id: i64) -> Result<Option<Status>> {
        let s: Option<String> = sqlx::query_scalar("SELECT status FROM runs WHERE id = $1")
            .bind(run_id)
            .fetch_optional(&mut **tx)
            .await
            .map_err(self.sql())?;
        s.map(|s| self.parse_status(&s)).transpose()
    }

    /// A write transaction. On SQLite it starts with BEGIN IMMEDIATE: the
    /// write lock is taken up front and waited for (busy timeout). A deferred
    /// transaction that reads and then writes gets SQLITE_BUSY at once when
    /// another connection holds the lock, e.g. a failed transaction whose
    /// rollback the pool has not run yet. PostgreSQL locks rows as it goes.
    async fn write_tx(&self) -> Result<Tx> {
        self.pool.begin_with(self.dialect.begin_write).await.map_err(self.sql())
    }

    /// Every row of a query, as the `Any` driver decodes it.
    async fn fetch_rows(&self, sql: &str, param: Option<&str>) -> Result<Vec<AnyRow>> {
        sqlx::query(sql).bind(param).fetch_all(&self.pool).await.map_err(self.sql())
    }
}
