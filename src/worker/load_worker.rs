//! A load worker: loads one share of a parallel first load into its stage table (see
//! `apply::parallel`), started by the syncing backend, never restarted.

use pgrx::bgworkers::BackgroundWorker;
use pgrx::prelude::*;

unsafe extern "C-unwind" {
    #[link_name = "die"]
    fn postgres_die(signal: std::ffi::c_int);
}

#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn lakesync_load_worker_main(arg: pg_sys::Datum) {
    // SIGTERM as in a backend: an ERROR at the next interrupt check, not an exit mid-write.
    // SIGINT (the syncing backend's cancel) cancels the statement, as in any backend.
    unsafe {
        pg_sys::pqsignal(pg_sys::SIGTERM as i32, Some(postgres_die));
        pg_sys::BackgroundWorkerUnblockSignals();
    }
    let extra = BackgroundWorker::get_extra().to_string();
    let mut parts = extra
        .split_whitespace()
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (db, k) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    // As the bootstrap superuser, then the syncing role (apply::parallel::work): on PG 15 a
    // worker's connection runs the can-login check, which a NOLOGIN role would fail.
    BackgroundWorker::connect_worker_to_spi_by_oid(
        Some(pg_sys::Oid::from(db)),
        Some(pg_sys::Oid::from(pg_sys::BOOTSTRAP_SUPERUSERID)),
    );
    let handle = arg.value() as u32;
    crate::apply::parallel::work(handle, k as usize);
}
