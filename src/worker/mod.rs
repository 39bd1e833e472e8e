//! The background worker: syncs that run by themselves.
//!
//! With `shared_preload_libraries = 'pg_lakesync'` the postmaster starts one [`launcher`] per
//! cluster. It connects to no database (so it never holds up `DROP DATABASE`), lists the
//! databases from the shared catalog and keeps one [`scheduler`] running in each database where
//! the extension is installed. A scheduler finds what is due — CONTINUOUS tables with a new
//! Delta version, SNAPSHOT and TRIGGERED tables whose `schedule` has come round, failed ones
//! whose retry time has — and starts a [`sync_worker`] for each, up to `lakesync.max_workers`
//! in the cluster; a sync worker runs one sync as the table's owner, in a transaction of its
//! own. Without the preload nothing here runs and on-demand syncs work as before.

pub mod hooks;
pub mod launcher;
pub mod load_worker;
pub mod schedule;
pub mod scheduler;
pub mod sync_worker;

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::pg_sys;

pub static ENABLED: GucSetting<bool> = GucSetting::<bool>::new(true);
pub static MAX_WORKERS: GucSetting<i32> = GucSetting::<i32>::new(2);
pub static POLL_INTERVAL_MS: GucSetting<i32> = GucSetting::<i32>::new(1000);
pub static MAX_RETRY_INTERVAL_S: GucSetting<i32> = GucSetting::<i32>::new(300);

/// The process types, as `pg_stat_activity.backend_type` shows them.
pub const LAUNCHER_TYPE: &str = "pg_lakesync launcher";
pub const SCHEDULER_TYPE: &str = "pg_lakesync scheduler";
pub const SYNC_TYPE: &str = "pg_lakesync sync";

/// From `_PG_init`: the settings always; the launcher and the hooks only at preload.
pub fn init() {
    GucRegistry::define_bool_guc(
        c"lakesync.enabled",
        c"Whether the background worker runs scheduled and continuous syncs.",
        c"Off: nothing syncs by itself (sync_now still works); the workers stay idle.",
        &ENABLED,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"lakesync.max_workers",
        c"How many syncs the background worker runs at once, in the whole cluster.",
        c"Each takes a background worker slot (max_worker_processes) while it runs.",
        &MAX_WORKERS,
        1,
        64,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"lakesync.poll_interval",
        c"How often the background worker looks for new Delta versions of continuous tables.",
        c"One file check per continuous table per poll; also how often schedules are checked.",
        &POLL_INTERVAL_MS,
        100,
        3_600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"lakesync.max_retry_interval",
        c"The longest wait before the background worker retries a failed sync.",
        c"Retries back off exponentially from one second up to this.",
        &MAX_RETRY_INTERVAL_S,
        1,
        86_400,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        launcher::register();
        hooks::install();
        crate::record::board::init();
    }
}

// Postgres' own SIGTERM handler of a backend (pgrx wraps `pg_sys::die` as a Rust function).
unsafe extern "C-unwind" {
    #[link_name = "die"]
    fn postgres_die(signal: std::ffi::c_int);
}

/// How a worker that runs a sync's work starts: signals as in a backend, then connected to the
/// database its `extra` names (`"<database oid> <n>"`) as the bootstrap superuser (it switches
/// to the role it works for itself). Returns the `<n>`.
///
/// SIGTERM (a fast shutdown, pg_terminate_backend) sets the die flag, which the work's next
/// interrupt check (every 50 ms while it waits for data) turns into an exit that rolls its
/// transaction back — not mid-write, as the postmaster's default handler for workers would;
/// SIGINT (pg_cancel_backend) raises an ERROR there instead. As the bootstrap superuser because on PG 15 a
/// worker's connection runs the can-login check, which a NOLOGIN role (a group role) would fail.
pub fn start_as_backend() -> u32 {
    let extra = pgrx::bgworkers::BackgroundWorker::get_extra().to_string();
    let mut parts = extra
        .split_whitespace()
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (db, n) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    unsafe {
        pg_sys::pqsignal(pg_sys::SIGTERM as i32, Some(postgres_die));
        pg_sys::BackgroundWorkerUnblockSignals();
    }
    pgrx::bgworkers::BackgroundWorker::connect_worker_to_spi_by_oid(
        Some(pg_sys::Oid::from(db)),
        Some(pg_sys::Oid::from(pg_sys::BOOTSTRAP_SUPERUSERID)),
    );
    n
}
