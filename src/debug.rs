//! Test hooks. Setting `lakesync.debug_pause` to `read`, `apply` or `commit` makes a sync wait
//! at that point (answering cancel and terminate), so the external tests can kill the backend
//! exactly there. Unset, a pause point costs one GUC lookup.

use pgrx::pg_sys;
use std::ffi::CStr;

/// How long a paused sync waits before it goes on by itself.
const MAX_PAUSE_MS: u64 = 60_000;

pub fn pause_point(point: &str) {
    let wanted = unsafe {
        let v = pg_sys::GetConfigOption(c"lakesync.debug_pause".as_ptr(), true, false);
        if v.is_null() {
            return;
        }
        CStr::from_ptr(v).to_string_lossy().into_owned()
    };
    if wanted != point {
        return;
    }
    pgrx::log!("pg_lakesync: paused at \"{point}\"");
    for _ in 0..MAX_PAUSE_MS / 10 {
        pgrx::check_for_interrupts!();
        unsafe { pg_sys::pg_usleep(10_000) };
    }
}
