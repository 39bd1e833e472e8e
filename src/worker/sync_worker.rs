//! A sync worker: runs one sync of one synced table, as the table's owner, in a transaction of
//! its own, then exits. A failure is recorded in that transaction (the spec's state, its
//! `last_error`, a failed run) and logged; the scheduler retries it later with backoff.

use pgrx::bgworkers::BackgroundWorker;
use pgrx::prelude::*;

#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn lakesync_sync_worker_main(_arg: pg_sys::Datum) {
    let relid = super::start_as_backend();
    let job = BackgroundWorker::transaction(|| {
        Spi::run("SET search_path = pg_catalog, pg_temp").ok();
        crate::sync::worker_job(pg_sys::Oid::from(relid)).unwrap_or_else(|e| {
            pgrx::log!("pg_lakesync: the table with OID {relid} cannot be synced: {e}");
            None
        })
    });
    let Some((target, owner)) = job else {
        return;
    };
    // The owner from here to the end of this process, commit included: deferred triggers and
    // constraints of the table fire at commit, and must run with the owner's rights, not ours.
    unsafe {
        pg_sys::SetUserIdAndSecContext(owner, pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32);
    }
    BackgroundWorker::transaction(|| {
        match crate::sync::sync_in_worker(&target) {
            Ok(r) => pgrx::debug1!("pg_lakesync: {}: {}", r.target, r.message),
            Err(e) => pgrx::log!("pg_lakesync: sync of {target} failed: {e}"),
        }
        if let Err(e) = crate::record::release_claimed_run() {
            pgrx::log!("pg_lakesync: {target}: {e}");
        }
    });
}
