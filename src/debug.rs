//! Test hooks. Setting `lakesync.debug_pause` to `open`, `read`, `apply` or `commit` (optionally
//! `point:seconds`) makes a sync wait at that point, answering cancel and terminate, so the
//! external tests can kill the backend exactly there or race another sync against it. Unset, a
//! pause point costs one read of the setting.

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::pg_sys;

static DEBUG_PAUSE: GucSetting<Option<std::ffi::CString>> =
    GucSetting::<Option<std::ffi::CString>>::new(None);

/// Registers the setting (from `_PG_init`).
pub fn register() {
    GucRegistry::define_string_guc(
        c"lakesync.debug_pause",
        c"Test hook: makes syncs wait at a point (open, read, apply, commit[:seconds]).",
        c"For tests that kill or race a sync at an exact point; empty (the default) for normal use.",
        &DEBUG_PAUSE,
        // Superusers only: a pause holds the sync's locks, and a database owner could otherwise
        // set it for everyone's syncs with ALTER DATABASE.
        GucContext::Suset,
        GucFlags::NO_SHOW_ALL,
    );
    // Any other lakesync.* name is a typo, not a placeholder to keep.
    unsafe { pg_sys::MarkGUCPrefixReserved(c"lakesync".as_ptr()) };
}

/// How long a paused sync waits before it goes on by itself.
const MAX_PAUSE_MS: u64 = 60_000;

/// How long the setting asks a sync to wait at `point` (read in the backend, so that a thread
/// of ours can be made to wait too: the `open` point delays the log read, as a slow store would).
pub fn pause_at(point: &str) -> Option<u64> {
    // Also a setting made by ALTER DATABASE/ROLE while it was USERSET (0.3.0) applies in a
    // superuser's context: only a superuser's own sync pauses.
    if !unsafe { pg_sys::superuser() } {
        return None;
    }
    let wanted = DEBUG_PAUSE.get()?;
    let wanted = wanted.to_string_lossy();
    let (at, ms) = match wanted.split_once(':') {
        Some((at, secs)) => (at, secs.parse::<u64>().map_or(MAX_PAUSE_MS, |s| s * 1000)),
        None => (wanted.as_ref(), MAX_PAUSE_MS),
    };
    (at == point).then_some(ms.min(MAX_PAUSE_MS))
}

pub fn pause_point(point: &str) {
    let Some(ms) = pause_at(point) else {
        return;
    };
    pgrx::log!("pg_lakesync: backend {} paused at \"{point}\"", unsafe {
        pg_sys::MyProcPid
    });
    for _ in 0..ms / 10 {
        pgrx::check_for_interrupts!();
        unsafe { pg_sys::pg_usleep(10_000) };
    }
}
