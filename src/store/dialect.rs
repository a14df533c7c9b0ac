//! The SQL that differs between SQLite and PostgreSQL. Everything else in
//! the store is written once, with `$N` parameters (which both accept).

/// One backend's spelling of what the two say differently.
#[derive(Debug)]
pub(super) struct Dialect {
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
}

pub(super) static SQLITE: Dialect = Dialect {
    now_iso: "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
    now_unix: "((julianday('now') - 2440587.5) * 86400.0)",
    // The write lock up front: see `Store::write_tx`.
    begin_write: "BEGIN IMMEDIATE",
    skip_locked: "",
    row_lock: "",
    iso_to_unix: "((julianday({}) - 2440587.5) * 86400.0)",
};

pub(super) static POSTGRES: Dialect = Dialect {
    now_iso: "to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')",
    now_unix: "date_part('epoch', clock_timestamp())",
    begin_write: "BEGIN",
    skip_locked: " FOR UPDATE SKIP LOCKED",
    row_lock: " FOR UPDATE",
    iso_to_unix: "date_part('epoch', ({})::timestamptz)",
};

impl Dialect {
    /// `iso_to_unix` applied to a column.
    pub fn unix_of(&self, column: &str) -> String {
        self.iso_to_unix.replace("{}", column)
    }
}
