//! The live board: what `lakesync.status` shows that is not committed anywhere — the latest
//! Delta version the scheduler has seen for each synced table (and when the oldest unsynced one
//! was committed), and each running sync's progress. Shared memory, so that watching a Delta
//! log writes no catalog row, and a sync's progress is visible while its transaction is open.
//! It exists only with the preload (shared memory is sized at server start); without it every
//! update is a no-op and the view shows NULLs.

use pgrx::lwlock::PgLwLock;
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::shmem::PGRXSharedMemory;
use std::sync::atomic::{AtomicBool, Ordering};

/// Tables the board follows at once. A slot is taken per synced table the scheduler watches or
/// a sync runs for; the least recently touched one is reused when all are taken.
const SLOTS: usize = 1024;

#[derive(Clone, Copy, Default)]
struct Slot {
    used: bool,
    db: u32,
    relid: u32,
    touched: i64,
    /// The latest Delta version seen (-1: none seen).
    latest: i64,
    /// The first version after the synced one (the oldest unsynced) when `latest` was seen,
    /// and its commit time (µs since the Unix epoch; 0: not known).
    pending: i64,
    pending_at: i64,
    /// The backend running a sync of the table (0: none), rows it has written, rows it expects
    /// (-1: not known).
    sync_pid: i32,
    rows_done: i64,
    rows_expected: i64,
}

#[derive(Clone, Copy)]
pub struct Board {
    slots: [Slot; SLOTS],
}

impl Default for Board {
    fn default() -> Self {
        Board {
            slots: [Slot::default(); SLOTS],
        }
    }
}

unsafe impl PGRXSharedMemory for Board {}

static BOARD: PgLwLock<Board> = unsafe { PgLwLock::new(c"pg_lakesync board") };
static READY: AtomicBool = AtomicBool::new(false);

/// At preload: asks for the shared memory. Backends inherit `READY` from the postmaster.
pub fn init() {
    pgrx::pg_shmem_init!(BOARD);
    READY.store(true, Ordering::Relaxed);
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

fn this_db() -> u32 {
    u32::from(unsafe { pg_sys::MyDatabaseId })
}

/// Runs `f` on the table's slot; when it has none and `take`, on a new one (a free slot, else
/// the least recently touched one without a running sync).
fn with_slot(relid: pg_sys::Oid, take: bool, f: impl FnOnce(&mut Slot)) {
    if !READY.load(Ordering::Relaxed) || relid == pg_sys::InvalidOid {
        return;
    }
    let (db, relid) = (this_db(), u32::from(relid));
    let mut board = BOARD.exclusive();
    let i = match find(&board, db, relid) {
        Some(i) => i,
        None if !take => return,
        None => {
            let Some(i) = board
                .slots
                .iter()
                .enumerate()
                .filter(|(_, s)| !s.used || s.sync_pid == 0)
                .min_by_key(|(_, s)| if s.used { s.touched } else { i64::MIN })
                .map(|(i, _)| i)
            else {
                return; // every slot has a running sync
            };
            board.slots[i] = Slot {
                used: true,
                db,
                relid,
                latest: -1,
                rows_expected: -1,
                ..Slot::default()
            };
            i
        }
    };
    let slot = &mut board.slots[i];
    slot.touched = now_us();
    f(slot);
}

thread_local! {
    /// Where this process last found each table's slot: checked, then used, so that a scheduler
    /// watching many tables does not scan the board for each at every poll.
    static HINTS: std::cell::RefCell<std::collections::HashMap<(u32, u32), usize>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// The slot of table `relid` of database `db`, if it has one.
fn find(board: &Board, db: u32, relid: u32) -> Option<usize> {
    let mine = |s: &Slot| s.used && s.db == db && s.relid == relid;
    if let Some(i) = HINTS.with_borrow(|h| h.get(&(db, relid)).copied()) {
        if mine(&board.slots[i]) {
            return Some(i);
        }
    }
    let i = board.slots.iter().position(mine)?;
    HINTS.with_borrow_mut(|h| {
        if h.len() >= SLOTS {
            h.clear();
        }
        h.insert((db, relid), i);
    });
    Some(i)
}

/// The scheduler saw `latest` as the newest version of the table's Delta log, and
/// `pending`, the first version after the synced one, committed at `pending_at`.
pub fn observed(relid: pg_sys::Oid, latest: i64, pending: i64, pending_at: Option<i64>) {
    with_slot(relid, true, |s| {
        s.latest = latest;
        s.pending = pending;
        s.pending_at = pending_at.unwrap_or(0);
    });
}

/// Forgets what the scheduler saw of the table's log (it no longer watches it: paused or
/// dropped); a running sync's progress stays.
pub fn forget(relid: pg_sys::Oid) {
    with_slot(relid, false, |s| {
        s.latest = -1;
        s.pending = 0;
        s.pending_at = 0;
    });
}

/// What the board last saw of the table's log: the latest version, if any.
pub fn latest_seen(relid: pg_sys::Oid) -> Option<i64> {
    if !READY.load(Ordering::Relaxed) {
        return None;
    }
    let (db, relid) = (this_db(), u32::from(relid));
    let board = BOARD.share();
    find(&board, db, relid)
        .map(|i| board.slots[i].latest)
        .filter(|l| *l >= 0)
}

thread_local! {
    /// The table this backend is syncing now, for the progress updates and the exit callback.
    static RUNNING: std::cell::Cell<Option<pg_sys::Oid>> = const { std::cell::Cell::new(None) };
    static EXIT_HOOKED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A sync of the table starts in this backend, towards `version`; it expects `expected` rows
/// when the Delta log's statistics say. Cleared by the returned guard (end, ERROR), or at exit.
pub fn sync_started(relid: pg_sys::Oid, version: i64) -> Running {
    // Not ready, or this sync is already on the board (a full refresh within an incremental).
    if !READY.load(Ordering::Relaxed) || RUNNING.get() == Some(relid) {
        return Running(None);
    }
    if !EXIT_HOOKED.get() {
        // A FATAL (terminate, shutdown) exits without unwinding: clear the slot then too.
        unsafe { pg_sys::before_shmem_exit(Some(clear_at_exit), pg_sys::Datum::from(0)) };
        EXIT_HOOKED.set(true);
    }
    let pid = unsafe { pg_sys::MyProcPid };
    with_slot(relid, true, |s| {
        s.sync_pid = pid;
        s.rows_done = 0;
        s.rows_expected = -1;
        s.latest = s.latest.max(version);
    });
    let outer = RUNNING.replace(Some(relid));
    Running(Some((relid, outer)))
}

/// Clears a running sync's progress when dropped.
pub struct Running(Option<(pg_sys::Oid, Option<pg_sys::Oid>)>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some((relid, outer)) = self.0 {
            finish(relid);
            RUNNING.set(outer);
        }
    }
}

fn finish(relid: pg_sys::Oid) {
    let pid = unsafe { pg_sys::MyProcPid };
    with_slot(relid, false, |s| {
        if s.sync_pid == pid {
            s.sync_pid = 0;
            s.rows_done = 0;
            s.rows_expected = -1;
        }
    });
}

#[pg_guard]
unsafe extern "C-unwind" fn clear_at_exit(_code: i32, _arg: pg_sys::Datum) {
    if let Some(relid) = RUNNING.get() {
        finish(relid);
    }
}

/// The running sync in this backend wrote `rows` more rows; it expects `expected` in all
/// (negative: not known).
pub fn progress(rows: i64, expected: i64) {
    if let Some(relid) = RUNNING.get() {
        with_slot(relid, false, |s| {
            s.rows_done += rows;
            if expected >= 0 {
                s.rows_expected = expected;
            }
        });
    }
}

/// The board's rows for this database's tables the caller owns (as row security shows each
/// role its own specs; a superuser all): what `lakesync.status` joins on the table's OID.
/// Empty without the preload.
/// SQL `lakesync.board()`, created in src/status.sql.
#[pg_extern(sql = false)]
#[allow(clippy::type_complexity)]
fn lakesync_board() -> TableIterator<
    'static,
    (
        name!(relid, pg_sys::Oid),
        name!(latest_version, Option<i64>),
        name!(pending_version, Option<i64>),
        name!(pending_since, Option<pgrx::datum::TimestampWithTimeZone>),
        name!(sync_pid, Option<i32>),
        name!(rows_done, Option<i64>),
        name!(rows_expected, Option<i64>),
    ),
> {
    let mut rows = Vec::new();
    if READY.load(Ordering::Relaxed) {
        let db = this_db();
        let slots: Vec<Slot> = {
            let board = BOARD.share();
            board
                .slots
                .iter()
                .filter(|s| s.used && s.db == db)
                .copied()
                .collect()
        };
        // The tables the caller owns, from one catalog read (a table dropped meanwhile is
        // simply not found).
        let relids: Vec<pg_sys::Oid> = slots.iter().map(|s| pg_sys::Oid::from(s.relid)).collect();
        let owned = crate::catalog::read_one::<Vec<pg_sys::Oid>>(
            "SELECT pg_catalog.array_agg(c.oid) FROM pg_catalog.pg_class c \
              WHERE c.oid OPERATOR(pg_catalog.=) ANY ($1) \
                AND pg_catalog.pg_has_role(c.relowner, 'USAGE')",
            &[relids.into()],
        )
        .ok()
        .flatten()
        .unwrap_or_default();
        for s in slots {
            let relid = pg_sys::Oid::from(s.relid);
            if !owned.contains(&relid) {
                continue;
            }
            let running = s.sync_pid != 0;
            rows.push((
                relid,
                (s.latest >= 0).then_some(s.latest),
                (s.latest >= 0).then_some(s.pending),
                (s.pending_at > 0)
                    .then(|| epoch_us_to_timestamptz(s.pending_at))
                    .flatten(),
                running.then_some(s.sync_pid),
                running.then_some(s.rows_done),
                (running && s.rows_expected >= 0).then_some(s.rows_expected),
            ));
        }
    }
    TableIterator::new(rows)
}

/// µs since the Unix epoch as a timestamptz (Postgres counts from 2000-01-01).
fn epoch_us_to_timestamptz(us: i64) -> Option<pgrx::datum::TimestampWithTimeZone> {
    pgrx::datum::TimestampWithTimeZone::try_from(crate::types::temporal::pg_timestamp(us)?).ok()
}
