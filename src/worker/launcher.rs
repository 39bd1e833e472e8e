//! The launcher: one per cluster, connected to no database. Every few seconds it lists the
//! databases (a scan of the shared catalog pg_database) and starts a scheduler in each one that
//! has none running. A scheduler in a database without the extension exits at once; such a
//! database is probed again after 3 s, then less and less often (up to a minute), while a
//! `CREATE EXTENSION` starts its database's scheduler itself (hooks.rs). A scheduler that died is
//! replaced within a round.

use super::{ENABLED, LAUNCHER_TYPE, SCHEDULER_TYPE};
use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BackgroundWorkerStatus, BgWorkerStartTime,
    DynamicBackgroundWorker, SignalWakeFlags,
};
use pgrx::pg_guard;
use pgrx::pg_sys;
use std::collections::HashMap;
use std::time::{Duration, Instant};

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

/// A database's scheduler as the launcher keeps it: the running one, and when to try again
/// after one that exited (a database without the extension: probed less and less often).
struct Serving {
    worker: Option<DynamicBackgroundWorker>,
    next_try: Instant,
    wait: Duration,
}

/// The longest wait between two probes of a database without the extension (a `CREATE
/// EXTENSION` starts its scheduler at once anyway: see hooks.rs).
const MAX_PROBE_WAIT: Duration = Duration::from_secs(60);

#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn lakesync_launcher_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    // No database: shared catalogs only.
    BackgroundWorker::connect_worker_to_spi(None, None);
    let mut serving: HashMap<pg_sys::Oid, Serving> = HashMap::new();
    let mut out_of_slots = false;
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
        serving.retain(|db, _| databases.contains(db));
        let now = Instant::now();
        for db in databases {
            let s = serving.entry(db).or_insert(Serving {
                worker: None,
                next_try: now,
                wait: ROUND,
            });
            match &s.worker {
                Some(w) if running(w) => {
                    s.wait = ROUND; // serving: a later exit is retried soon
                    continue;
                }
                Some(_) => {
                    // It exited (no extension there, or it failed): back off.
                    s.worker = None;
                    s.next_try = now + s.wait;
                    s.wait = (s.wait * 2).min(MAX_PROBE_WAIT);
                    continue;
                }
                None if now < s.next_try => continue,
                None => {}
            }
            match start_scheduler(db, false) {
                Some(w) => {
                    s.worker = Some(w);
                    out_of_slots = false;
                }
                None => {
                    if !out_of_slots {
                        pgrx::log!("pg_lakesync launcher: no background worker slot is free for a scheduler (max_worker_processes)");
                    }
                    out_of_slots = true;
                    break;
                }
            }
        }
    }
}

fn running(w: &DynamicBackgroundWorker) -> bool {
    !matches!(
        w.pid(),
        Err(BackgroundWorkerStatus::Stopped | BackgroundWorkerStatus::PostmasterDied)
    )
}

/// Starts a scheduler in database `db`; `wait_for_extension` when the extension is being created
/// there (its transaction may not have committed yet).
pub fn start_scheduler(
    db: pg_sys::Oid,
    wait_for_extension: bool,
) -> Option<DynamicBackgroundWorker> {
    let extra = format!(
        "{} {}",
        u32::from(db),
        if wait_for_extension { "wait" } else { "" }
    );
    BackgroundWorkerBuilder::new(SCHEDULER_TYPE)
        .set_type(SCHEDULER_TYPE)
        .set_library("pg_lakesync")
        .set_function("lakesync_scheduler_main")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        // Never restarted by the postmaster: the launcher starts a new one if it is still wanted.
        .set_restart_time(None)
        .set_extra(extra.trim())
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
