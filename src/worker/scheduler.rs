//! A database's scheduler: at every poll it reads which synced tables are due (one catalog read,
//! no writes), checks continuous tables for their next Delta version (one file check each) and
//! starts a sync worker for each table that needs one, while the cluster has fewer than
//! `lakesync.max_workers` running. It exits when the extension is not (or no longer) installed,
//! and when another scheduler already serves the database.

use super::{ENABLED, MAX_RETRY_INTERVAL_S, MAX_WORKERS, POLL_INTERVAL_MS, SYNC_TYPE};
use crate::source::location::SourceLocation;
use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BackgroundWorkerStatus, BgWorkerStartTime,
    DynamicBackgroundWorker, SignalWakeFlags,
};
use pgrx::prelude::*;
use std::collections::HashMap;
use std::time::Duration;

/// Session advisory lock that makes a scheduler the only one in its database ("lakesync").
const SCHEDULER_LOCK: i64 = 0x6c61_6b65_7379_6e63;

/// Which synced tables the worker may have to sync now: continuous ones (if a new version is
/// there), and those `lakesync.next_sync` says are due (a schedule, a retry). `$1` is the longest
/// retry wait.
const DUE: &str = "\
    SELECT pg_catalog.to_regclass(s.target)::pg_catalog.oid, s.mode, s.source, s.synced_version, \
           s.state = 'failed' \
      FROM lakesync.synced_tables s \
     WHERE pg_catalog.to_regclass(s.target) IS NOT NULL AND NOT s.paused \
       AND ((s.mode = 'continuous' AND s.state IN ('new', 'synced')) \
            OR lakesync.next_sync(s, $1::pg_catalog.interval) <= pg_catalog.now())";

struct Due {
    relid: pg_sys::Oid,
    continuous: bool,
    source: String,
    synced_version: Option<i64>,
    retry: bool,
}

#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn lakesync_scheduler_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let db = BackgroundWorker::get_extra()
        .trim()
        .parse::<u32>()
        .unwrap_or(0);
    BackgroundWorker::connect_worker_to_spi_by_oid(
        Some(pg_sys::Oid::from(db)),
        Some(pg_sys::Oid::from(pg_sys::BOOTSTRAP_SUPERUSERID)),
    );
    let serving = BackgroundWorker::transaction(|| {
        // Our SQL never resolves through the database's own search_path setting.
        Spi::run("SET search_path = pg_catalog, pg_temp").ok();
        installed()
            && Spi::get_one_with_args::<bool>(
                "SELECT pg_catalog.pg_try_advisory_lock($1)",
                &[SCHEDULER_LOCK.into()],
            )
            .ok()
            .flatten()
            .unwrap_or(false)
    });
    if !serving {
        return; // exit 0: nothing to do in this database
    }
    pgrx::log!("pg_lakesync scheduler started");
    let mut running: HashMap<pg_sys::Oid, DynamicBackgroundWorker> = HashMap::new();
    while BackgroundWorker::wait_latch(Some(poll_interval())) {
        if BackgroundWorker::sighup_received() {
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        running.retain(|_, w| {
            !matches!(
                w.pid(),
                Err(BackgroundWorkerStatus::Stopped | BackgroundWorkerStatus::PostmasterDied)
            )
        });
        if !ENABLED.get() {
            continue;
        }
        let Some((due, busy)) = BackgroundWorker::transaction(read_due) else {
            break; // the extension was dropped
        };
        let mut free = (MAX_WORKERS.get() as i64 - busy).max(0);
        for d in due {
            if free == 0 {
                break;
            }
            if running.contains_key(&d.relid) || !worth_a_sync(&d) {
                continue;
            }
            match start_sync(db, d.relid) {
                Some(w) => {
                    running.insert(d.relid, w);
                    free -= 1;
                }
                None => break, // no background worker slot: next poll
            }
        }
    }
}

fn poll_interval() -> Duration {
    Duration::from_millis(POLL_INTERVAL_MS.get().max(100) as u64)
}

fn installed() -> bool {
    Spi::get_one::<bool>(
        "SELECT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'pg_lakesync')",
    )
    .ok()
    .flatten()
    .unwrap_or(false)
}

/// The due tables and how many syncs run in the cluster now; None once the extension is gone.
fn read_due() -> Option<(Vec<Due>, i64)> {
    if !installed() {
        return None;
    }
    let busy = Spi::get_one_with_args::<i64>(
        "SELECT pg_catalog.count(*) FROM pg_catalog.pg_stat_activity WHERE backend_type = $1",
        &[SYNC_TYPE.into()],
    )
    .ok()
    .flatten()
    .unwrap_or(0);
    let max_retry = format!("{} seconds", MAX_RETRY_INTERVAL_S.get());
    let due = Spi::connect(|c| {
        let rows = c.select(DUE, None, &[max_retry.as_str().into()])?;
        let mut out = Vec::new();
        for r in rows {
            out.push(Due {
                relid: r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid),
                continuous: r.get::<String>(2)?.as_deref() == Some("continuous"),
                source: r.get::<String>(3)?.unwrap_or_default(),
                synced_version: r.get::<i64>(4)?,
                retry: r.get::<bool>(5)?.unwrap_or(false),
            });
        }
        Ok::<_, pgrx::spi::Error>(out)
    });
    match due {
        Ok(due) => Some((due, busy)),
        Err(e) => {
            pgrx::warning!("pg_lakesync scheduler: cannot read lakesync.synced_tables: {e}");
            Some((Vec::new(), busy))
        }
    }
}

/// A continuous table needs a sync when its next version's commit is there (or to retry, or
/// when it cannot tell); everything else the query found due.
fn worth_a_sync(d: &Due) -> bool {
    if !d.continuous || d.retry {
        return true;
    }
    let next = d.synced_version.map_or(0, |v| v + 1);
    SourceLocation::parse(&d.source)
        .ok()
        .and_then(|l| l.has_commit(next))
        .unwrap_or(true)
}

fn start_sync(db: u32, relid: pg_sys::Oid) -> Option<DynamicBackgroundWorker> {
    BackgroundWorkerBuilder::new(SYNC_TYPE)
        .set_type(SYNC_TYPE)
        .set_library("pg_lakesync")
        .set_function("lakesync_sync_worker_main")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(None)
        .set_extra(&format!("{db} {}", u32::from(relid)))
        .set_notify_pid(unsafe { pg_sys::MyProcPid })
        .load_dynamic()
        .ok()
}
