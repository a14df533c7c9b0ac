//! The SQL that differs between SQLite and PostgreSQL, one module per
//! backend (`sqlite`, `postgres`). Everything else in the store is written
//! once, with `$N` parameters (which both accept).

mod postgres;
mod sqlite;

pub(super) use postgres::POSTGRES;
pub(super) use sqlite::SQLITE;

/// One backend's spelling of what the two say differently.
#[derive(Debug)]
pub(in crate::store) struct Dialect {
    /// The current time as ISO-8601 UTC text (every `*_at` column).
    pub now_iso: &'static str,
    /// The current time in Unix seconds, on the database's clock: leases and
    /// heartbeats of workers on different machines are compared on one clock.
    pub now_unix: &'static str,
    /// How a write transaction starts.
    pub begin_write: &'static str,
    /// Appended to the claim's inner SELECT: PostgreSQL lets concurrent
    /// claims skip each other's locked rows instead of queueing on them.
    pub skip_locked: &'static str,
    /// Appended to the fence's SELECT: PostgreSQL keeps the run's row locked
    /// until the write commits (SQLite's write lock covers the transaction).
    pub row_lock: &'static str,
    /// An ISO-8601 text column (`{}`) in Unix seconds.
    pub iso_to_unix: &'static str,
    /// Orders epochs (`e`) recorded in the same millisecond (`recorded_at`
    /// ties): SQLite's rowid follows the order of its serialised writes, so
    /// of their commits, which ASHA's decisions followed; PostgreSQL's
    /// `written` (migrations/postgres/0003) is drawn at each insert, after
    /// the sweep's row lock, so in the same order.
    pub same_millisecond: &'static str,
}

impl Dialect {
    /// `iso_to_unix` applied to a column.
    pub fn unix_of(&self, column: &str) -> String {
        self.iso_to_unix.replace("{}", column)
    }
}
