//! Test hooks. Setting `lakesync.debug_pause` to `read`, `apply` or `commit` (optionally
//! `point:seconds`) makes a sync wait at that point, answering cancel and terminate, so the
//! external tests can kill the backend exactly there or race another sync against it. Unset, a
//! pause point costs one GUC lookup.

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
    let (at, ms) = match wanted.split_once(':') {
        Some((at, secs)) => (at, secs.parse::<u64>().map_or(MAX_PAUSE_MS, |s| s * 1000)),
        None => (wanted.as_str(), MAX_PAUSE_MS),
    };
    if at != point {
        return;
    }
    pgrx::log!("pg_lakesync: backend {} paused at \"{point}\"", unsafe {
        pg_sys::MyProcPid
    });
    for _ in 0..ms.min(MAX_PAUSE_MS) / 10 {
        pgrx::check_for_interrupts!();
        unsafe { pg_sys::pg_usleep(10_000) };
    }
}
