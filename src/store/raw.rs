//! Bulk reads stepped on the caller's thread.
//!
//! sqlx runs each SQLite connection on a worker thread and hands every row to
//! the async side through a channel, copying each value on the way. For the
//! one read that returns thousands of rows at once (`sweep results` over a
//! sweep of 10,000 runs) that hand-off cost ten times what SQLite itself did:
//! a thread wake-up and 25 allocations per row. Here a connection is taken
//! from sqlx's pool, locked (`lock_handle`: sqlx's worker thread does nothing
//! with it meanwhile), and one read-only statement is prepared, stepped and
//! finalized through SQLite's C API on this thread, each row read in place.
//!
//! This is the only `unsafe` in the store. It is confined to [`each_row`] and
//! [`Row`]'s accessors, which never let a pointer outlive the step it was
//! read in.

// The module exists to call SQLite's C API; each block says why it is sound.
#![allow(unsafe_code)]

use libsqlite3_sys as ffi;
use std::ffi::{c_int, CStr};
use std::ptr::NonNull;

/// One row, valid while the callback of [`each_row`] runs.
pub struct Row {
    stmt: NonNull<ffi::sqlite3_stmt>,
}

/// A row's cells by position, whichever backend read it.
pub trait Cells {
    /// Column `i` as an integer (NULL: `None`).
    fn int(&self, i: usize) -> Result<Option<i64>, String>;
    /// Column `i` as a float (NULL: `None`).
    fn real(&self, i: usize) -> Result<Option<f64>, String>;
    /// Column `i` as text (NULL: `None`).
    fn text(&self, i: usize) -> Result<Option<&str>, String>;
}

/// Rows of the `Any` driver (PostgreSQL), decoded by sqlx.
impl Cells for sqlx::any::AnyRow {
    fn int(&self, i: usize) -> Result<Option<i64>, String> {
        sqlx::Row::try_get(self, i).map_err(|e| e.to_string())
    }
    fn real(&self, i: usize) -> Result<Option<f64>, String> {
        sqlx::Row::try_get(self, i).map_err(|e| e.to_string())
    }
    fn text(&self, i: usize) -> Result<Option<&str>, String> {
        sqlx::Row::try_get(self, i).map_err(|e| e.to_string())
    }
}

impl Row {
    fn kind(&self, i: usize) -> c_int {
        // SAFETY: `stmt` is a statement positioned on a row (each_row calls back only after SQLITE_ROW).
        unsafe { ffi::sqlite3_column_type(self.stmt.as_ptr(), i as c_int) }
    }
}

impl Cells for Row {
    fn int(&self, i: usize) -> Result<Option<i64>, String> {
        if self.kind(i) == ffi::SQLITE_NULL {
            return Ok(None);
        }
        // SAFETY: as in `kind`.
        Ok(Some(unsafe { ffi::sqlite3_column_int64(self.stmt.as_ptr(), i as c_int) }))
    }

    fn real(&self, i: usize) -> Result<Option<f64>, String> {
        if self.kind(i) == ffi::SQLITE_NULL {
            return Ok(None);
        }
        // SAFETY: as in `kind`.
        Ok(Some(unsafe { ffi::sqlite3_column_double(self.stmt.as_ptr(), i as c_int) }))
    }

    fn text(&self, i: usize) -> Result<Option<&str>, String> {
        let i_c = i as c_int;
        if self.kind(i) == ffi::SQLITE_NULL {
            return Ok(None);
        }
        // SAFETY: as in `kind`; sqlite3_column_text is called before
        // sqlite3_column_bytes (SQLite's documented order), and the bytes stay
        // valid until the next step, which cannot happen while `&self` is borrowed.
        let bytes = unsafe {
            let p = ffi::sqlite3_column_text(self.stmt.as_ptr(), i_c);
            let n = ffi::sqlite3_column_bytes(self.stmt.as_ptr(), i_c);
            if p.is_null() {
                return Ok(Some(""));
            }
            std::slice::from_raw_parts(p, n as usize)
        };
        std::str::from_utf8(bytes).map(Some).map_err(|e| format!("column {i} is not UTF-8: {e}"))
    }
}

/// Prepares `sql` with `?1` bound to `param` (text or NULL) and calls `each`
/// for every row, on this thread. Errors are SQLite's messages.
pub async fn each_row(
    pool: &sqlx::SqlitePool,
    sql: &str,
    param: Option<&str>,
    mut each: impl FnMut(&Row) -> Result<(), String>,
) -> Result<(), RawError> {
    let mut conn = pool.acquire().await.map_err(RawError::Sqlx)?;
    let mut handle = conn.lock_handle().await.map_err(RawError::Sqlx)?;
    let db = handle.as_raw_handle().as_ptr();
    let message = |db: *mut ffi::sqlite3| {
        // SAFETY: `db` is an open connection; the message is copied at once.
        unsafe { CStr::from_ptr(ffi::sqlite3_errmsg(db)).to_string_lossy().into_owned() }
    };
    let mut stmt: *mut ffi::sqlite3_stmt = std::ptr::null_mut();
    // SAFETY: `db` is open and locked for us; `sql` is passed with its length
    // (no terminator needed); `stmt` receives a statement we finalize below.
    let rc = unsafe {
        ffi::sqlite3_prepare_v2(db, sql.as_ptr().cast(), sql.len() as c_int, &raw mut stmt, std::ptr::null_mut())
    };
    let Some(stmt) = NonNull::new(stmt).filter(|_| rc == ffi::SQLITE_OK) else {
        return Err(RawError::Sqlite(message(db)));
    };
    // From here on the statement is finalized on every path.
    let result = (|| {
        // SAFETY: a valid statement; SQLITE_TRANSIENT makes SQLite copy the text.
        let rc = unsafe {
            match param {
                Some(p) => ffi::sqlite3_bind_text(
                    stmt.as_ptr(),
                    1,
                    p.as_ptr().cast(),
                    p.len() as c_int,
                    ffi::SQLITE_TRANSIENT(),
                ),
                None => ffi::sqlite3_bind_null(stmt.as_ptr(), 1),
            }
        };
        if rc != ffi::SQLITE_OK {
            return Err(RawError::Sqlite(message(db)));
        }
        let row = Row { stmt };
        loop {
            // SAFETY: a valid, bound statement.
            match unsafe { ffi::sqlite3_step(stmt.as_ptr()) } {
                ffi::SQLITE_ROW => each(&row).map_err(RawError::Row)?,
                ffi::SQLITE_DONE => return Ok(()),
                _ => return Err(RawError::Sqlite(message(db))),
            }
        }
    })();
    // SAFETY: finalized once; no `Row` referring to it survives the closure above.
    unsafe { ffi::sqlite3_finalize(stmt.as_ptr()) };
    result
}

/// What [`each_row`] can fail with.
#[derive(Debug)]
pub enum RawError {
    /// Taking a connection from the pool failed.
    Sqlx(sqlx::Error),
    /// SQLite refused the statement or failed while stepping it.
    Sqlite(String),
    /// A row did not have the expected shape.
    Row(String),
}
