//! `DROP DATABASE` is never held up by our workers: Postgres 15 waits for (and then refuses
//! because of) every process connected to the database, and only asks autovacuum to leave. A
//! ProcessUtility hook asks our scheduler and sync workers of that database to exit first (a sync
//! in flight rolls back); Postgres' own wait of up to five seconds then sees them gone.

use pgrx::pg_sys;
use std::ffi::CStr;

static mut PREVIOUS: pg_sys::ProcessUtility_hook_type = None;

pub fn install() {
    unsafe {
        PREVIOUS = pg_sys::ProcessUtility_hook;
        pg_sys::ProcessUtility_hook = Some(process_utility);
    }
}

#[pgrx::pg_guard]
#[allow(clippy::too_many_arguments)]
unsafe extern "C-unwind" fn process_utility(
    pstmt: *mut pg_sys::PlannedStmt,
    query_string: *const std::ffi::c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    query_env: *mut pg_sys::QueryEnvironment,
    dest: *mut pg_sys::DestReceiver,
    qc: *mut pg_sys::QueryCompletion,
) {
    let stmt = (*pstmt).utilityStmt;
    if !stmt.is_null() && (*stmt).type_ == pg_sys::NodeTag::T_DropdbStmt {
        let drop = stmt as *mut pg_sys::DropdbStmt;
        let db = pg_sys::get_database_oid((*drop).dbname, true);
        // Only for whoever may drop it: its owner (or a superuser); Postgres checks again.
        if db != pg_sys::InvalidOid && pg_sys::pg_database_ownercheck(db, pg_sys::GetUserId()) {
            stop_our_workers_in(db);
        }
    }
    match PREVIOUS {
        Some(previous) => previous(
            pstmt,
            query_string,
            read_only_tree,
            context,
            params,
            query_env,
            dest,
            qc,
        ),
        None => pg_sys::standard_ProcessUtility(
            pstmt,
            query_string,
            read_only_tree,
            context,
            params,
            query_env,
            dest,
            qc,
        ),
    }
}

/// Sends SIGTERM to every pg_lakesync worker connected to database `db`.
unsafe fn stop_our_workers_in(db: pg_sys::Oid) {
    pg_sys::pgstat_clear_snapshot();
    for i in 1..=pg_sys::pgstat_fetch_stat_numbackends() {
        let entry = pg_sys::pgstat_fetch_stat_local_beentry(i);
        if entry.is_null() {
            continue;
        }
        let status = &(*entry).backendStatus;
        if status.st_databaseid != db || status.st_backendType != pg_sys::BackendType::B_BG_WORKER {
            continue;
        }
        let kind = pg_sys::GetBackgroundWorkerTypeByPid(status.st_procpid);
        if !kind.is_null()
            && CStr::from_ptr(kind)
                .to_string_lossy()
                .starts_with("pg_lakesync")
        {
            libc::kill(status.st_procpid, libc::SIGTERM);
        }
    }
}
