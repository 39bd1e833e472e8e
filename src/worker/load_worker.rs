//! A load worker: loads one share of a parallel first load into its stage table (see
//! `apply::parallel`), started by the syncing backend, never restarted.

use pgrx::prelude::*;

#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn lakesync_load_worker_main(arg: pg_sys::Datum) {
    // As the bootstrap superuser; `work` switches to the syncing role.
    let k = super::start_as_backend();
    let handle = arg.value() as u32;
    crate::apply::parallel::work(handle, k as usize);
}
