//! Run a step in a subtransaction, as PL/pgSQL's EXCEPTION blocks do, so a failed sync can be
//! rolled back on its own and its failure recorded before the ERROR goes on to the caller.

use crate::error::Result;
use pgrx::pg_sys;
use pgrx::pg_sys::panic::CaughtError;
use pgrx::PgTryBuilder;

/// Runs `f` in a subtransaction: kept when it returns Ok and `keep` is set, rolled back when it
/// returns Err or raises (the raised error is handed back, to be rethrown), or when not `keep`.
#[allow(clippy::result_large_err)] // pgrx's CaughtError, handed back as is to be rethrown
pub fn run<T>(
    keep: bool,
    f: impl FnOnce() -> Result<T>,
) -> std::result::Result<Result<T>, CaughtError> {
    unsafe {
        let ctx = pg_sys::CurrentMemoryContext;
        let owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(ctx);
        let restore = move || {
            pg_sys::MemoryContextSwitchTo(ctx);
            pg_sys::CurrentResourceOwner = owner;
        };
        let f = std::panic::AssertUnwindSafe(f);
        PgTryBuilder::new(move || {
            let f = f;
            let out = (f.0)();
            if out.is_ok() && keep {
                pg_sys::ReleaseCurrentSubTransaction();
            } else {
                pg_sys::RollbackAndReleaseCurrentSubTransaction();
            }
            restore();
            Ok(out)
        })
        .catch_others(move |e| {
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
            restore();
            Err(e)
        })
        .execute()
    }
}

/// Whether a caught error is one of ours that needs a full refresh.
pub fn needs_full_refresh(e: &CaughtError) -> bool {
    let r = match e {
        CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) => r,
        CaughtError::RustPanic { ereport, .. } => ereport,
    };
    crate::error::raised(r.sql_error_code(), r.message()).is_some_and(|e| e.needs_full_refresh())
}

/// The SQLSTATE of a caught error.
pub fn sqlstate(e: &CaughtError) -> pgrx::PgSqlErrorCode {
    match e {
        CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) => r.sql_error_code(),
        CaughtError::RustPanic { ereport, .. } => ereport.sql_error_code(),
    }
}

/// The message of a caught error, for the run record.
pub fn message(e: &CaughtError) -> String {
    match e {
        CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) => r.message().to_string(),
        CaughtError::RustPanic { ereport, .. } => ereport.message().to_string(),
    }
}
