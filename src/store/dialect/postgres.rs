//! PostgreSQL's spelling.

use super::Dialect;

pub(in crate::store) static POSTGRES: Dialect = Dialect {
    now_iso: "to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')",
    now_unix: "date_part('epoch', clock_timestamp())",
    begin_write: "BEGIN",
    skip_locked: " FOR UPDATE SKIP LOCKED",
    row_lock: " FOR UPDATE",
    iso_to_unix: "date_part('epoch', ({})::timestamptz)",
    same_millisecond: "e.written",
};
