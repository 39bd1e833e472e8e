//! Settings of the calling session that must not reach into a sync: its `search_path` (which
//! could resolve our SQL to look-alike functions and operators) and its `client_encoding` (which
//! binary COPY applies to text it receives). Each is pinned the way a function's `SET` clause
//! pins a setting — a GUC nest level, undone when the work ends, also on ERROR.

use crate::error::{LakeError, Result};
use pgrx::pg_sys;
use pgrx::PgTryBuilder;
use std::ffi::CString;

/// What our generated SQL runs under: only the system catalogs, then this session's temp schema
/// (last, so a temp object can never shadow a catalog one; temp schemas are never searched for
/// functions or operators).
pub const SAFE_SEARCH_PATH: &str = "pg_catalog, pg_temp";

/// Runs `f` with `search_path` pinned to [`SAFE_SEARCH_PATH`].
pub fn with_safe_search_path<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    with_settings(&[("search_path", SAFE_SEARCH_PATH)], f)
}

/// Runs `f` with `client_encoding` pinned to UTF8: the binary COPY rows we produce hold UTF-8
/// text and JSON, which Postgres' receive functions convert from the *client* encoding to the
/// database's. The session's own setting is back in place before an ERROR is reported, so the
/// client reads the error message in the encoding it asked for.
pub fn with_utf8_client_encoding<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    with_settings(&[("client_encoding", "UTF8")], f)
}

/// Runs `f` with `settings` in place, as `SET LOCAL` inside it would: the session's values are
/// back when it returns or raises (and at the transaction's abort, whatever happens).
pub fn with_settings<T>(settings: &[(&str, &str)], f: impl FnOnce() -> Result<T>) -> Result<T> {
    let level = unsafe { pg_sys::NewGUCNestLevel() };
    for (name, value) in settings {
        let (n, v) = (CString::new(*name).unwrap(), CString::new(*value).unwrap());
        let applied = unsafe {
            pg_sys::set_config_option(
                n.as_ptr(),
                v.as_ptr(),
                pg_sys::GucContext::PGC_USERSET,
                pg_sys::GucSource::PGC_S_SESSION,
                pg_sys::GucAction::GUC_ACTION_SAVE,
                true,
                pg_sys::PGERROR as i32,
                false,
            )
        };
        if applied <= 0 {
            unsafe { pg_sys::AtEOXact_GUC(true, level) };
            return Err(LakeError::Internal(format!("cannot set {name} to {value}")));
        }
    }
    let f = std::panic::AssertUnwindSafe(f);
    PgTryBuilder::new(move || {
        let f = f;
        (f.0)()
    })
    .finally(move || unsafe { pg_sys::AtEOXact_GUC(true, level) })
    .execute()
}
