//! A ProcessUtility hook (installed at preload) for three statements:
//! - `DROP DATABASE` is never held up by our workers: Postgres 15 waits for (and then refuses
//!   because of) every process connected to the database, and only asks autovacuum to leave. We
//!   ask our scheduler and sync workers of that database to exit first (a sync in flight rolls
//!   back); Postgres' own wait of up to five seconds then sees them gone.
//! - `DROP EXTENSION pg_lakesync` is not held up by a sync in flight: its workers in this
//!   database are asked to exit (their syncs roll back).
//! - `CREATE EXTENSION pg_lakesync` starts this database's scheduler at once.

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
    let mut created = false;
    if !stmt.is_null() {
        match (*stmt).type_ {
            pg_sys::NodeTag::T_DropdbStmt => {
                let drop = stmt as *mut pg_sys::DropdbStmt;
                let db = pg_sys::get_database_oid((*drop).dbname, true);
                // Only for whoever may drop it: its owner (or a superuser); Postgres checks again.
                if db != pg_sys::InvalidOid
                    && pg_sys::pg_database_ownercheck(db, pg_sys::GetUserId())
                {
                    stop_our_workers_in(db);
                }
            }
            pg_sys::NodeTag::T_DropStmt => {
                let drop = stmt as *mut pg_sys::DropStmt;
                if (*drop).removeType == pg_sys::ObjectType::OBJECT_EXTENSION
                    && names_us((*drop).objects)
                {
                    let ext = pg_sys::get_extension_oid(c"pg_lakesync".as_ptr(), true);
                    if ext != pg_sys::InvalidOid
                        && pg_sys::pg_extension_ownercheck(ext, pg_sys::GetUserId())
                    {
                        stop_our_workers_in(pg_sys::MyDatabaseId);
                    }
                }
            }
            pg_sys::NodeTag::T_CreateExtensionStmt => {
                let create = stmt as *mut pg_sys::CreateExtensionStmt;
                created = CStr::from_ptr((*create).extname).to_bytes() == b"pg_lakesync";
            }
            _ => {}
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
    if created {
        // It waits for this transaction to commit (and exits if it never does).
        let _ = super::launcher::start_scheduler(pg_sys::MyDatabaseId, true);
    }
}

/// Whether a DROP's object list names our extension.
unsafe fn names_us(objects: *mut pg_sys::List) -> bool {
    (0..pg_sys::list_length(objects)).any(|i| {
        let name = pg_sys::list_nth(objects, i) as *mut pg_sys::String;
        !name.is_null()
            && !(*name).sval.is_null()
            && CStr::from_ptr((*name).sval).to_bytes() == b"pg_lakesync"
    })
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
