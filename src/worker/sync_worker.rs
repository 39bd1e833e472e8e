//! A sync worker: runs one sync of one synced table, as the table's owner, in a transaction of
//! its own, then exits. A failure is recorded in that transaction (the spec's state, its
//! `last_error`, a failed run) and logged; the scheduler retries it later with backoff.

use pgrx::bgworkers::BackgroundWorker;
use pgrx::prelude::*;

// Postgres' own SIGTERM handler of a backend (pgrx wraps `pg_sys::die` as a Rust function).
unsafe extern "C-unwind" {
    #[link_name = "die"]
    fn postgres_die(signal: std::ffi::c_int);
}

#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn lakesync_sync_worker_main(_arg: pg_sys::Datum) {
    // SIGTERM as in a backend (a fast shutdown, pg_terminate_backend): it sets the die flag,
    // which the sync's interrupt checks (every 50 ms while it waits for data) turn into an
    // ERROR that rolls the sync back. SIGINT (pg_cancel_backend) cancels the same way.
    unsafe {
        pg_sys::pqsignal(pg_sys::SIGTERM as i32, Some(postgres_die));
        pg_sys::BackgroundWorkerUnblockSignals();
    }
    let extra = BackgroundWorker::get_extra().to_string();
    let mut parts = extra
        .split_whitespace()
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (db, relid) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    // As the bootstrap superuser, then the table's owner: on PG 15 a worker's connection runs
    // the can-login check, which a NOLOGIN owner (a group role) would fail.
    BackgroundWorker::connect_worker_to_spi_by_oid(
        Some(pg_sys::Oid::from(db)),
        Some(pg_sys::Oid::from(pg_sys::BOOTSTRAP_SUPERUSERID)),
    );
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
