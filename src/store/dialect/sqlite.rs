//! SQLite's spelling.

use super::Dialect;

pub(in crate::store) static SQLITE: Dialect = Dialect {
    now_iso: "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
    now_unix: "((julianday('now') - 2440587.5) * 86400.0)",
    // The write lock up front: see `Store::write_tx`.
    begin_write: "BEGIN IMMEDIATE",
    skip_locked: "",
    row_lock: "",
    iso_to_unix: "((julianday({}) - 2440587.5) * 86400.0)",
    same_millisecond: "e.rowid",
};
