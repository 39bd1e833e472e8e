//! The launcher: one per cluster, connected to no database. Every few seconds it lists the
//! databases (a scan of the shared catalog pg_database) and starts a scheduler in each one that
//! has none running; a scheduler in a database without the extension exits at once, so a
//! `CREATE EXTENSION` is picked up by the next round, and a scheduler that died is replaced.

use super::{ENABLED, LAUNCHER_TYPE, SCHEDULER_TYPE};
use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BackgroundWorkerStatus, BgWorkerStartTime,
    DynamicBackgroundWorker, SignalWakeFlags,
};
use pgrx::pg_guard;
use pgrx::pg_sys;
use std::collections::HashMap;
use std::time::Duration;

/// How often the launcher looks for databases that need a scheduler.
const ROUND: Duration = Duration::from_secs(3);

/// Registers the launcher with the postmaster (at preload). It starts once recovery has
/// finished, so a hot standby runs none of our workers: its synced tables arrive by
/// replication.
pub fn register() {
    BackgroundWorkerBuilder::new(LAUNCHER_TYPE)
        .set_type(LAUNCHER_TYPE)
        .set_library("pg_lakesync")
        .set_function("lakesync_launcher_main")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        // The postmaster's default for a crashed worker is never: come back after a while.
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn lakesync_launcher_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    // No database: shared catalogs only.
    BackgroundWorker::connect_worker_to_spi(None, None);
    let mut schedulers: HashMap<pg_sys::Oid, DynamicBackgroundWorker> = HashMap::new();
    let mut first = true;
    while first || BackgroundWorker::wait_latch(Some(ROUND)) {
        first = false;
        if BackgroundWorker::sighup_received() {
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        if !ENABLED.get() {
            continue;
        }
        let databases = unsafe { connectable_databases() };
        schedulers.retain(|db, w| {
            databases.contains(db)
                && !matches!(
                    w.pid(),
                    Err(BackgroundWorkerStatus::Stopped | BackgroundWorkerStatus::PostmasterDied)
                )
        });
        for db in databases {
            if schedulers.contains_key(&db) {
                continue;
            }
            match start_scheduler(db) {
                Some(w) => {
                    schedulers.insert(db, w);
                }
                None => {
                    pgrx::log!("pg_lakesync launcher: no background worker slot is free for a scheduler (max_worker_processes)");
                    break;
                }
            }
        }
    }
}

fn start_scheduler(db: pg_sys::Oid) -> Option<DynamicBackgroundWorker> {
    BackgroundWorkerBuilder::new(SCHEDULER_TYPE)
        .set_type(SCHEDULER_TYPE)
        .set_library("pg_lakesync")
        .set_function("lakesync_scheduler_main")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        // Never restarted by the postmaster: the launcher starts a new one if it is still wanted.
        .set_restart_time(None)
        .set_extra(&u32::from(db).to_string())
        .set_notify_pid(unsafe { pg_sys::MyProcPid })
        .load_dynamic()
        .ok()
}

/// The databases that accept connections (templates excluded), read from pg_database.
unsafe fn connectable_databases() -> Vec<pg_sys::Oid> {
    let mut out = Vec::new();
    pg_sys::StartTransactionCommand();
    let rel = pg_sys::table_open(
        pg_sys::DatabaseRelationId,
        pg_sys::AccessShareLock as pg_sys::LOCKMODE,
    );
    let scan = pg_sys::table_beginscan_catalog(rel, 0, std::ptr::null_mut());
    loop {
        let tuple = pg_sys::heap_getnext(scan, pg_sys::ScanDirection::ForwardScanDirection);
        if tuple.is_null() {
            break;
        }
        let db = &*(pg_sys::GETSTRUCT(tuple) as *const pg_sys::FormData_pg_database);
        if db.datallowconn && !db.datistemplate {
            out.push(db.oid);
        }
    }
    pg_sys::table_endscan(scan);
    pg_sys::table_close(rel, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
    pg_sys::CommitTransactionCommand();
    out
}
