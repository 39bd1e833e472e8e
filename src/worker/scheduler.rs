//! A database's scheduler: at every poll it reads which synced tables are due (one catalog read,
//! no writes), checks continuous tables for their next Delta version (one file check each) and
//! starts a sync worker for each table that needs one, while the cluster has fewer than
//! `lakesync.max_workers` running. It exits when the extension is not (or no longer) installed,
//! and when another scheduler already serves the database (the one with the smaller pid stays).
//! While the installed extension's version is not this library's (binaries upgraded, `ALTER
//! EXTENSION … UPDATE` not run yet) it waits and syncs nothing.

use super::{
    ENABLED, MAX_RETRY_INTERVAL_S, MAX_WORKERS, POLL_INTERVAL_MS, SCHEDULER_TYPE, SYNC_TYPE,
};
use crate::record::board;
use crate::source::location::SourceLocation;
use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BackgroundWorkerStatus, BgWorkerStartTime,
    DynamicBackgroundWorker, SignalWakeFlags,
};
use pgrx::prelude::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The synced tables the worker watches (all but the paused ones), longest unsynced first, and
/// whether each may have to be synced now: a continuous one (if a new version is there), one
/// `lakesync.next_sync` says is due (a schedule, a retry). `$1` is the longest retry wait.
const WATCHED: &str = "\
    SELECT pg_catalog.to_regclass(s.target)::pg_catalog.oid, s.mode, s.source, s.synced_version, \
           s.state = 'failed', pg_catalog.date_part('epoch', s.last_sync_finished), \
           (s.mode = 'continuous' AND s.state IN ('new', 'synced')) \
            OR COALESCE(lakesync.next_sync(s, $1::pg_catalog.interval) <= pg_catalog.now(), false), \
           s.owner::pg_catalog.text, s.options OPERATOR(pg_catalog.->>) 'credential' \
      FROM lakesync.synced_tables s \
     WHERE pg_catalog.to_regclass(s.target) IS NOT NULL AND NOT s.paused \
     ORDER BY s.last_sync_finished NULLS FIRST";

/// How often the latest Delta version of a table that is not continuous is looked for (for
/// `lakesync.status`; continuous ones at every poll).
const WATCH_INTERVAL: Duration = Duration::from_secs(10);

/// How long a scheduler started by `CREATE EXTENSION` waits for that transaction to commit.
const WAIT_FOR_EXTENSION: Duration = Duration::from_secs(10);

struct Due {
    relid: pg_sys::Oid,
    continuous: bool,
    source: String,
    /// How to look at an object-store source's log (its owner's credential), read with the
    /// due list; None for server paths, or when it cannot be had (the sync then finds out).
    access: Option<std::sync::Arc<crate::source::store::StoreAccess>>,
    synced_version: Option<i64>,
    retry: bool,
    /// May have to be synced now (see WATCHED).
    due: bool,
    /// When the spec's last sync finished (epoch seconds): a worker that exits without changing
    /// it made no progress (it could not even record a failure).
    finished: Option<f64>,
}

/// A sync worker this scheduler started, and what it must change to count as progress.
struct Attempt {
    worker: Option<DynamicBackgroundWorker>,
    finished_before: Option<f64>,
    /// Backoff for attempts that make no progress (a failure that could not be recorded, the
    /// table's lock held elsewhere): never sooner than this again.
    next_try: Instant,
    wait: Duration,
    /// A poll has run since its worker exited.
    exit_seen: bool,
}

#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn lakesync_scheduler_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let extra = BackgroundWorker::get_extra().to_string();
    let mut words = extra.split_whitespace();
    let db = words
        .next()
        .and_then(|w| w.parse::<u32>().ok())
        .unwrap_or(0);
    let wait = words.next() == Some("wait");
    BackgroundWorker::connect_worker_to_spi_by_oid(
        Some(pg_sys::Oid::from(db)),
        Some(pg_sys::Oid::from(pg_sys::BOOTSTRAP_SUPERUSERID)),
    );
    // Our SQL never resolves through the database's own search_path setting.
    BackgroundWorker::transaction(|| Spi::run("SET search_path = pg_catalog, pg_temp").ok());
    let deadline = Instant::now() + WAIT_FOR_EXTENSION;
    loop {
        if BackgroundWorker::transaction(|| installed_version().is_some()) {
            break;
        }
        if !wait
            || Instant::now() > deadline
            || !BackgroundWorker::wait_latch(Some(Duration::from_millis(200)))
        {
            return; // exit 0: nothing to do in this database
        }
    }
    pgrx::log!("pg_lakesync scheduler started");
    let mut attempts: HashMap<pg_sys::Oid, Attempt> = HashMap::new();
    let mut watched: HashMap<pg_sys::Oid, Instant> = HashMap::new();
    let mut swept: Option<Instant> = None;
    let mut warned_version = false;
    let mut last_error_log: Option<Instant> = None;
    let mut next_poll = Instant::now() + poll_interval();
    while BackgroundWorker::wait_latch(Some(next_poll.saturating_duration_since(Instant::now()))) {
        if BackgroundWorker::sighup_received() {
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        // Woken early (the postmaster tells us when our workers start and exit): poll now only
        // when one of them has exited, which may free a worker for a table left waiting.
        if Instant::now() < next_poll && !attempts.values().any(Attempt::exited) {
            continue;
        }
        if Instant::now() >= next_poll {
            next_poll = Instant::now() + poll_interval();
        }
        if !ENABLED.get() {
            continue;
        }
        // Runs a worker left unfinished (it was killed, or the server crashed) are marked
        // failed at start, and then every WATCH_INTERVAL.
        let sweep = swept.is_none_or(|t| t.elapsed() >= WATCH_INTERVAL);
        let poll = BackgroundWorker::transaction(|| {
            match crate::subxact::run(true, || Ok(read_due(sweep))) {
                Ok(Ok(poll)) => Ok(poll),
                Ok(Err(e)) => Err(e.to_string()),
                Err(caught) => Err(crate::subxact::message(&caught)),
            }
        });
        if sweep && matches!(poll, Ok(Poll::Due(..))) {
            swept = Some(Instant::now());
        }
        let (due, busy) = match poll {
            Ok(Poll::Due(due, busy)) => (due, busy),
            Ok(Poll::Gone) => break, // the extension was dropped, or another scheduler serves
            Ok(Poll::OtherVersion(v)) => {
                if !warned_version {
                    pgrx::log!("pg_lakesync scheduler: the extension is at version {v}, the library at {}; no syncs until ALTER EXTENSION pg_lakesync UPDATE", env!("CARGO_PKG_VERSION"));
                    warned_version = true;
                }
                continue;
            }
            Err(e) => {
                if last_error_log.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                    pgrx::warning!("pg_lakesync scheduler: cannot read what is due: {e}");
                    last_error_log = Some(Instant::now());
                }
                continue;
            }
        };
        warned_version = false;
        let due = watch(due, &mut watched);
        dispatch(db, due, busy, &mut attempts);
    }
}

enum Poll {
    /// The watched tables, and the pids of the sync workers running in the cluster.
    Due(Vec<Due>, Vec<i32>),
    Gone,
    OtherVersion(String),
}

impl Attempt {
    /// Its worker has exited, and this scheduler has not polled since.
    fn exited(&self) -> bool {
        !self.exit_seen && self.worker.as_ref().is_some_and(|w| !running(w))
    }
}

fn dispatch(db: u32, due: Vec<Due>, busy: Vec<i32>, attempts: &mut HashMap<pg_sys::Oid, Attempt>) {
    let now = Instant::now();
    // Every worker of ours that has not exited counts, also one that has not connected yet
    // (pg_stat_activity does not show it); and the other databases' syncs that pg_stat_activity
    // shows.
    let ours: Vec<Option<i32>> = attempts
        .values()
        .filter_map(|a| a.worker.as_ref().filter(|w| running(w)))
        .map(|w| w.pid().ok())
        .collect();
    let others = busy.iter().filter(|p| !ours.contains(&Some(**p))).count();
    let mut free = MAX_WORKERS.get() as i64 - ours.len() as i64 - others as i64;
    // Exits seen by this poll no longer wake us early.
    for a in attempts.values_mut() {
        if a.exited() {
            a.exit_seen = true;
        }
    }
    for d in due {
        let a = attempts.entry(d.relid).or_insert(Attempt {
            worker: None,
            finished_before: None,
            next_try: now,
            wait: Duration::ZERO,
            exit_seen: false,
        });
        match &a.worker {
            Some(w) if running(w) => continue,
            Some(_) => {
                a.worker = None;
                if a.finished_before == d.finished {
                    // No progress: back off, from the poll interval up to max_retry_interval.
                    a.wait = (a.wait * 2)
                        .max(poll_interval())
                        .min(Duration::from_secs(MAX_RETRY_INTERVAL_S.get() as u64));
                    a.next_try = now + a.wait;
                } else {
                    a.wait = Duration::ZERO;
                }
            }
            None => {}
        }
        if now < a.next_try {
            continue;
        }
        if free <= 0 {
            break;
        }
        match start_sync(db, d.relid) {
            Some(w) => {
                a.worker = Some(w);
                a.exit_seen = false;
                a.finished_before = d.finished;
                free -= 1;
            }
            None => break, // no background worker slot: next poll
        }
    }
}

fn running(w: &DynamicBackgroundWorker) -> bool {
    !matches!(
        w.pid(),
        Err(BackgroundWorkerStatus::Stopped | BackgroundWorkerStatus::PostmasterDied)
    )
}

fn poll_interval() -> Duration {
    Duration::from_millis(POLL_INTERVAL_MS.get().max(100) as u64)
}

/// The installed extension's version in this database, if it is installed.
fn installed_version() -> Option<String> {
    crate::catalog::read_one::<String>(
        "SELECT (SELECT extversion::pg_catalog.text FROM pg_catalog.pg_extension \
                  WHERE extname = 'pg_lakesync')",
        &[],
    )
    .ok()
    .flatten()
}

/// The watched tables and how many syncs run in the cluster now; first, when `sweep`, marks
/// the unfinished runs of workers that are gone failed.
fn read_due(sweep: bool) -> Poll {
    match installed_version() {
        None => return Poll::Gone,
        Some(v) if v != env!("CARGO_PKG_VERSION") => return Poll::OtherVersion(v),
        Some(_) => {}
    }
    // Syncs running in the cluster, and whether a scheduler older than this one serves here.
    let (busy, other) = crate::catalog::read_two::<Vec<i32>, bool>(
        "SELECT pg_catalog.array_agg(pid) FILTER (WHERE backend_type = $1), \
                pg_catalog.bool_or(backend_type = $2 AND datid = $3 \
                                   AND pid < pg_catalog.pg_backend_pid()) \
           FROM pg_catalog.pg_stat_activity",
        &[
            SYNC_TYPE.into(),
            SCHEDULER_TYPE.into(),
            unsafe { pg_sys::MyDatabaseId }.into(),
        ],
    )
    .unwrap_or((None, None));
    if other == Some(true) {
        return Poll::Gone;
    }
    if sweep {
        match crate::record::sweep_unfinished() {
            Ok(0) => {}
            Ok(n) => pgrx::log!("pg_lakesync scheduler: marked {n} unfinished sync run(s) failed"),
            Err(e) => pgrx::warning!("pg_lakesync scheduler: {e}"),
        }
    }
    let max_retry = format!("{} seconds", MAX_RETRY_INTERVAL_S.get());
    let due = Spi::connect(|c| {
        let rows = c.select(WATCHED, None, &[max_retry.as_str().into()])?;
        let mut out = Vec::new();
        for r in rows {
            let source = r.get::<String>(3)?.unwrap_or_default();
            let owner = r.get::<String>(8)?.unwrap_or_default();
            let credential = r.get::<String>(9)?;
            out.push(Due {
                relid: r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid),
                continuous: r.get::<String>(2)?.as_deref() == Some("continuous"),
                access: crate::credentials::watch_access(&source, &owner, credential.as_deref()),
                source,
                synced_version: r.get::<i64>(4)?,
                retry: r.get::<bool>(5)?.unwrap_or(false),
                finished: r.get::<f64>(6)?,
                due: r.get::<bool>(7)?.unwrap_or(false),
            });
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .unwrap_or_default();
    Poll::Due(due, busy.unwrap_or_default())
}

/// Looks for each watched table's latest Delta version (continuous ones at every poll, the
/// others every WATCH_INTERVAL), puts it on the board for `lakesync.status`, and returns the
/// tables to sync: a continuous one when its next version's commit is there (or to retry, or
/// when it cannot tell); every other due one.
fn watch(specs: Vec<Due>, watched: &mut HashMap<pg_sys::Oid, Instant>) -> Vec<Due> {
    let now = Instant::now();
    watched.retain(|relid, _| {
        let keep = specs.iter().any(|d| d.relid == *relid);
        if !keep {
            board::forget(*relid); // paused or dropped: what we saw goes stale
        }
        keep
    });
    let mut due = Vec::new();
    for d in specs {
        let slow = watched
            .get(&d.relid)
            .is_none_or(|t| now.duration_since(*t) >= WATCH_INTERVAL);
        if slow {
            watched.insert(d.relid, now);
        }
        let newer = if d.continuous || slow {
            observe(&d, slow)
        } else {
            None
        };
        let sync = d.due && (!d.continuous || d.retry || newer.unwrap_or(true));
        if sync {
            due.push(d);
        }
    }
    due
}

/// Finds the table's latest version and puts it on the board; whether there is a version after
/// the synced one (None: cannot tell). A `slow` look also reads the last checkpoint's version,
/// for a table so far behind that the commits after the synced one have been cleaned up.
fn observe(d: &Due, slow: bool) -> Option<bool> {
    let mut location = SourceLocation::parse(&d.source).ok()?;
    if location.provider().is_some() {
        // A store that did not answer is left alone for a while: the scheduler waits for each
        // look, and one slow store must not hold up every other table's polls.
        let now = Instant::now();
        if PROBE_FAILED.with_borrow(|f| f.get(&d.relid).is_some_and(|until| *until > now)) {
            return None;
        }
        location.access = Some(d.access.clone()?);
        let seen = crate::source::location::probe_deadline(PROBE_BUDGET, || {
            observe_at(d, slow, &location)
        });
        PROBE_FAILED.with_borrow_mut(|f| match seen {
            None => {
                f.insert(d.relid, now + PROBE_BACKOFF);
            }
            Some(_) => {
                f.remove(&d.relid);
            }
        });
        return seen;
    }
    observe_at(d, slow, &location)
}

thread_local! {
    /// Object-store tables whose last look failed, and until when they are not looked at.
    static PROBE_FAILED: std::cell::RefCell<HashMap<pg_sys::Oid, Instant>> =
        std::cell::RefCell::new(HashMap::new());
}

/// How long one look at an object-store table's log may take in all.
const PROBE_BUDGET: Duration = Duration::from_secs(3);

/// How long a table whose store did not answer is not looked at (its syncs still run).
const PROBE_BACKOFF: Duration = Duration::from_secs(30);

fn observe_at(d: &Due, slow: bool, location: &SourceLocation) -> Option<bool> {
    let synced = d.synced_version.unwrap_or(-1);
    // What the board saw last, if it is still there (a table replaced at the same path may
    // have fewer versions).
    let known = match board::latest_seen(d.relid) {
        Some(k) if k > synced && location.has_commit(k) == Some(true) => k,
        _ => synced,
    };
    let mut latest = location.latest_commit(known)?;
    if slow && latest == synced {
        if let Some(checkpoint) = location.checkpoint_version().filter(|c| *c > synced) {
            latest = location.latest_commit(checkpoint)?;
        }
    }
    let pending = synced + 1;
    let pending_at = if latest >= pending {
        location.commit_time(pending).ok().flatten()
    } else {
        None
    };
    board::observed(d.relid, latest, pending, pending_at);
    Some(latest > synced)
}

fn start_sync(db: u32, relid: pg_sys::Oid) -> Option<DynamicBackgroundWorker> {
    BackgroundWorkerBuilder::new(SYNC_TYPE)
        .set_type(SYNC_TYPE)
        .set_library("pg_lakesync")
        .set_function("lakesync_sync_worker_main")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(None)
        // The postmaster sets our latch when it starts and when it stops: a table left waiting
        // for a free worker is dispatched at once, not at the next poll.
        .set_notify_pid(unsafe { pg_sys::MyProcPid })
        .set_extra(&format!("{db} {}", u32::from(relid)))
        .load_dynamic()
        .ok()
}
