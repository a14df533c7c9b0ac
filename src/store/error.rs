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
    /// The database stayed unreachable (connection refused or lost, server
    /// restarting, a write lock held by another process) for as long as a
    /// worker waits for it (`SWEEP_STORE_WAIT_SECS`).
    #[error(
        "database {db}: unreachable for {waited_secs:.0}s ({detail}); this worker stops and leaves the queue as it \
         is: start `sweep worker` again once the database answers"
    )]
    Unreachable {
        /// The database.
        db: String,
        /// How long the worker tried.
        waited_secs: f64,
        /// The last error.
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

impl StoreError {
    /// Whether the database itself failed to answer, not the query: a lost or
    /// refused connection, a server shutting down or starting up, too many
    /// connections, a serialization failure or deadlock (PostgreSQL), or a
    /// write lock that another process held past the busy timeout (SQLite).
    /// The same query may succeed once the database is back.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Sql { source, .. } => sqlx_unavailable(source),
            StoreError::Query { detail, .. } => detail.contains("database is locked"),
            StoreError::Unreachable { .. } => true,
            _ => false,
        }
    }

    /// What went wrong, without the database's name.
    pub fn detail(&self) -> String {
        match self {
            StoreError::Sql { source, .. } => source.to_string(),
            StoreError::Query { detail, .. } | StoreError::Unreachable { detail, .. } => detail.clone(),
            other => other.to_string(),
        }
    }
}

fn sqlx_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(d) => d.code().is_some_and(|c| unavailable_code(&c)),
        _ => false,
    }
}

/// A database error code that says the database, not the query, failed:
/// PostgreSQL's five-character SQLSTATEs, SQLite's (extended) result codes.
fn unavailable_code(code: &str) -> bool {
    if code.len() == 5 {
        // 08: connection exception; 57P01-57P03: admin shutdown, crash shutdown,
        // cannot connect now (starting up); 53300: too many connections; 40001
        // and 40P01: serialization failure and deadlock (rolled back); 25006: a
        // read-only transaction (a standby not yet promoted, during a failover).
        return code.starts_with("08")
            || matches!(code, "57P01" | "57P02" | "57P03" | "53300" | "40001" | "40P01" | "25006");
    }
    // SQLITE_BUSY and SQLITE_LOCKED, with their extended codes (at most 4 digits).
    code.parse::<u32>().is_ok_and(|c| matches!(c & 0xff, 5 | 6))
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

#[cfg(test)]
mod tests {
    use super::unavailable_code;

    #[test]
    fn the_database_failing_is_told_from_the_query_failing() {
        // PostgreSQL: connection lost, server shutting down or starting, too many clients, rolled back,
        // a standby during a failover
        for code in ["08006", "08001", "57P01", "57P02", "57P03", "53300", "40001", "40P01", "25006"] {
            assert!(unavailable_code(code), "{code}");
        }
        // unique violation, syntax error, undefined table, check violation, disk full
        for code in ["23505", "42601", "42P01", "23514", "53100"] {
            assert!(!unavailable_code(code), "{code}");
        }
        // SQLite: BUSY, BUSY_RECOVERY, BUSY_SNAPSHOT, BUSY_TIMEOUT, LOCKED, LOCKED_SHAREDCACHE
        for code in ["5", "261", "517", "773", "6", "262"] {
            assert!(unavailable_code(code), "{code}");
        }
        // CONSTRAINT_UNIQUE, CORRUPT, FULL, IOERR, READONLY
        for code in ["2067", "11", "13", "10", "8"] {
            assert!(!unavailable_code(code), "{code}");
        }
    }
}
