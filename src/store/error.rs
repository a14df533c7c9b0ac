//! The store's errors.

use std::path::PathBuf;

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database said no.
    #[error("database {db}: {source}{}", io_hint(&.source.to_string()))]
    Sql {
        /// The database (file, or URL without password).
        db: String,
        /// The cause.
        #[source]
        source: sqlx::Error,
    },
    /// The schema could not be brought up to date.
    #[error("database {db}: applying migrations failed: {source}")]
    Migrate {
        /// The database.
        db: String,
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
    /// Another worker (or a later attempt) holds the run now.
    #[error(
        "run {run_id} is no longer held by this worker ({worker}, attempt {attempt}); another worker took it over"
    )]
    LostOwnership {
        /// The run.
        run_id: i64,
        /// This worker.
        worker: String,
        /// The attempt this worker held.
        attempt: i64,
    },
    /// The run cannot be retried in its state (it is training, or done
    /// without `from_scratch`).
    #[error("run {run_id} is {status}: {why}")]
    NotRetryable {
        /// The run.
        run_id: i64,
        /// Its status.
        status: String,
        /// What to do instead.
        why: &'static str,
    },
    /// `sweep cancel` on a run that is not queued, interrupted or running.
    #[error("run {run_id} is {status}: {why}")]
    NotCancellable {
        /// The run.
        run_id: i64,
        /// Its status.
        status: String,
        /// What to do instead.
        why: &'static str,
    },
    /// A run that is not in the database (removed meanwhile).
    #[error("run {run_id} is not in the database (removed?)")]
    NoSuchRun {
        /// The run.
        run_id: i64,
    },
    /// `sweep rm` on a run that is running (or that another sweep took up meanwhile).
    #[error("run {run_id} was not removed: {why}")]
    NotRemovable {
        /// The run.
        run_id: i64,
        /// Why, and what to do instead.
        why: &'static str,
    },
    /// SQLite refused a query or failed while running it.
    #[error("database {db}: {detail}{}", io_hint(.detail))]
    Query {
        /// The database.
        db: String,
        /// SQLite's message.
        detail: String,
    },
    /// A stored value does not parse.
    #[error("database {db}: corrupt value in {what}: {detail}")]
    Corrupt {
        /// The database.
        db: String,
        /// Which value.
        what: String,
        /// Why it does not parse.
        detail: String,
    },
}

/// What SQLite's bare "disk I/O error" most often means for sweep's database.
fn io_hint(detail: &str) -> &'static str {
    if detail.contains("disk I/O error") {
        " (the -wal or -shm file beside the database was removed or damaged while it was in use, or the disk \
         failed; records since the last run ended may be lost: check the disk, then run `sweep status`)"
    } else if detail.contains("database or disk is full") {
        " (the disk is full: free space, then run `sweep worker` to go on)"
    } else {
        ""
    }
}
