//! A first load shared by several backends (option `load_workers`): the Delta files are split
//! among background workers, each COPYs its share into one stage table, and the syncing backend
//! takes the stage's files over (as a full replace's swap does) in its own transaction — so the
//! synced table appears whole at its commit, or not at all.
//!
//! The workers write in transactions of their own, so the stage must be a committed table:
//! worker 0 creates it (in the target's schema, named `lakesync_load_<xid>` after the syncing
//! transaction, owned by the syncing role, no grants) and commits before anyone loads. Every
//! way out leaves no stage behind: on success the takeover drops it; worker 0 then waits for
//! the syncing transaction to end and drops a stage still there (the sync failed, was
//! cancelled, or its backend died); one whose worker 0 died too is dropped by the next parallel
//! load in that schema.
//!
//! What this costs: rows committed by other transactions are not written frozen (a later VACUUM
//! freezes them, as after a plain COPY), and each worker takes a background worker slot.
//!
//! The leader and its workers talk through a dynamic shared memory segment: a header, a slot
//! per worker (its outcome), then the job as JSON.

use super::snapshot::LoadResult;
use crate::error::{LakeError, Result};
use crate::plan::target::{quote_ident, TargetName};
use crate::plan::ColumnsPlan;
use crate::source::DeltaSource;
use pgrx::bgworkers::{BackgroundWorkerBuilder, BgWorkerStartTime, DynamicBackgroundWorker};
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

pub const WORKER_TYPE: &str = "pg_lakesync load";
const MAX: usize = crate::options::MAX_LOAD_WORKERS as usize;
const MESSAGE_BYTES: usize = 2048;
/// How often the leader looks at its workers' slots (and for a cancel) while it waits.
const POLL: Duration = Duration::from_millis(10);
/// What marks a stage as ours: the next parallel load drops an orphan only if it says this.
const STAGE_COMMENT: &str =
    "pg_lakesync: stage of a parallel first load (dropped when the load ends)";
const STAGE_PREFIX: &str = "lakesync_load_";

/// What a segment of ours starts with (a worker started late must not read another's).
const MAGIC: u32 = 0x4c4b_5031;
/// Stage states in the header.
const STAGE_PENDING: u32 = 0;
const STAGE_MADE: u32 = 1;
const STAGE_FAILED: u32 = 2;
/// Slot states. LOADED: the share is in, its transaction waits for the others' to commit
/// with them. UNFIT: the worker could not prepare (read the source, plan): the leader loads by
/// itself instead.
const RUNNING: u32 = 0;
const DONE: u32 = 1;
const FAILED: u32 = 2;
const LOADED: u32 = 3;
const UNFIT: u32 = 4;
/// Loaded, then rolled back (another failed, the leader left, or it was cancelled itself).
const ROLLED_BACK: u32 = 5;

#[repr(C)]
struct Header {
    magic: AtomicU32,
    /// Set by the leader once `workers` and the job are written; workers wait for it.
    ready: AtomicU32,
    /// How many workers have a share (those started beyond it exit).
    workers: AtomicU32,
    /// Set when the leader is gone or gave up: waiting workers exit.
    abandoned: AtomicU32,
    /// Set by the leader once it took the stage over (its detach then cancels no one).
    finished: AtomicU32,
    stage_state: AtomicU32,
    /// The stage's OID once `stage_state` is STAGE_MADE.
    stage: AtomicU32,
    job_len: AtomicU32,
    slots: [Slot; MAX],
}

#[repr(C)]
struct Slot {
    state: AtomicU32,
    pid: AtomicI32,
    rows: AtomicU64,
    skipped: AtomicU64,
    /// A failure as Postgres reported it: SQLSTATE, then message, detail and hint, each ended
    /// by a NUL byte, written before `state` says FAILED.
    sqlstate: AtomicI32,
    error: std::cell::UnsafeCell<[u8; MESSAGE_BYTES]>,
}

/// What every worker needs to load its share, as the leader resolved it.
#[derive(Serialize, Deserialize)]
struct Job {
    /// The source as its spec names it, the role whose credential reads it, and which one.
    source: String,
    owner: String,
    credential: Option<String>,
    version: i64,
    /// The sync's options and primary key: each worker plans the columns as the leader did.
    options: serde_json::Value,
    primary_key: Vec<String>,
    columns: Vec<String>,
    column_defs: String,
    schema: String,
    stage: String,
    /// The role that syncs (the workers run as it) and the syncing transaction.
    user: u32,
    leader_xid: u32,
    shares: Vec<Vec<String>>,
}

/// What the leader knows of the sync beyond the plan.
pub struct Request<'a> {
    pub owner: &'a str,
    pub credential: Option<&'a str>,
    pub options: &'a serde_json::Value,
    pub primary_key: &'a [String],
    pub workers: u32,
}

/// Why a parallel load is not possible here, if it is not (the load then runs in the syncing
/// backend alone, as with load_workers 1).
fn why_serial(relid: pg_sys::Oid, plan: &ColumnsPlan, files: usize) -> Result<Option<String>> {
    if files < 2 {
        return Ok(Some(format!("the Delta table has {files} data file(s)")));
    }
    // Whatever keeps a full replace from swapping (a trigger, a publication, a logical slot,
    // wal_level minimal, an event trigger, timeseries_key …) keeps the takeover from it too.
    if let Some(why) = super::swap::why_in_place(relid, plan)? {
        return Ok(Some(why));
    }
    // An index on the new table (an event trigger's) would not see the stage's rows.
    let indexed = unsafe {
        let rel = pgrx::PgRelation::open(relid);
        (*(*rel.as_ptr()).rd_rel).relhasindex
    };
    if indexed {
        return Ok(Some("the new table already has an index".into()));
    }
    Ok(why_serial_here(relid))
}

fn why_serial_here(relid: pg_sys::Oid) -> Option<String> {
    // The workers' rows become visible to this transaction's later statements only with a
    // new snapshot per statement.
    if unsafe { pg_sys::XactIsoLevel } >= pg_sys::XACT_REPEATABLE_READ as i32 {
        return Some("the transaction is REPEATABLE READ or SERIALIZABLE".into());
    }
    if unsafe { pg_sys::IsBackgroundWorker } {
        return Some("the sync runs in a background worker".into());
    }
    let (tablespace, persistence) = unsafe {
        let rel = pgrx::PgRelation::open(relid);
        let form = (*rel.as_ptr()).rd_rel;
        ((*form).reltablespace, (*form).relpersistence)
    };
    if tablespace != pg_sys::InvalidOid {
        return Some("the table is not in the database's default tablespace".into());
    }
    if persistence != pg_sys::RELPERSISTENCE_PERMANENT as std::ffi::c_char {
        return Some("the table is temporary or unlogged".into());
    }
    None
}

/// Loads the new, empty target `relid` from `source` with up to `req.workers` background
/// workers; None when it cannot (the reason is logged at DEBUG1) and the caller loads alone.
pub fn load(
    target: &TargetName,
    relid: pg_sys::Oid,
    plan: &ColumnsPlan,
    source: &DeltaSource,
    req: &Request,
) -> Result<Option<LoadResult>> {
    let clock = std::time::Instant::now();
    let src = source.clone();
    let files = crate::offload::run(move || crate::source::files::list(&src))?;
    if let Some(why) = why_serial(relid, plan, files.len())? {
        pgrx::debug1!(
            "pg_lakesync: {} loaded by one backend: {why}",
            target.qualified()
        );
        return Ok(None);
    }
    let (xid, full_xid) = unsafe {
        (
            pg_sys::GetTopTransactionId(),
            pg_sys::GetTopFullTransactionId().value,
        )
    };
    let stage = format!("{STAGE_PREFIX}{full_xid}");
    drop_orphans(&target.schema)?;
    let wanted = (req.workers as usize).min(files.len()).min(MAX);
    let mut job = Job {
        source: source.location.display(),
        owner: req.owner.to_string(),
        credential: req.credential.map(str::to_string),
        version: source.version(),
        options: req.options.clone(),
        primary_key: req.primary_key.to_vec(),
        columns: plan.columns.iter().map(|c| c.name.clone()).collect(),
        column_defs: super::ddl::column_defs(plan),
        schema: target.schema.clone(),
        stage: stage.clone(),
        user: unsafe { u32::from(pg_sys::GetUserId()) },
        leader_xid: xid.into_inner(),
        shares: shares(files.clone(), wanted),
    };
    // Fewer workers than wanted only regroup the same paths: room for the most.
    let job_bytes = serde_json::to_vec(&job).map(|j| j.len()).unwrap_or(0) + 1024 + 16 * MAX;
    let seg = Segment::create(job_bytes)?;
    // However the leader leaves before it took the stage over (an ERROR, a cancel, a FATAL:
    // its mapping is detached then too), its workers are told and cancelled.
    unsafe { pg_sys::on_dsm_detach(seg.seg, Some(leader_detached), pg_sys::Datum::from(0usize)) };
    let mut started = Vec::new();
    for k in 0..wanted {
        match launch(seg.handle, k) {
            Some(w) => started.push(w),
            None => break,
        }
    }
    if started.len() < 2 {
        // Those that did start find no share and exit.
        seg.header().abandoned.store(1, Ordering::Release);
        pgrx::debug1!(
            "pg_lakesync: {} loaded by one backend: no free background worker slots (max_worker_processes)",
            target.qualified()
        );
        return Ok(None);
    }
    job.shares = shares(files, started.len());
    seg.publish(&job)?;
    let workers = Workers {
        seg: &seg,
        handles: started,
    };
    let outcome = workers.wait()?;
    let Some((rows, skipped)) = outcome else {
        return Ok(None);
    };
    seg.header().finished.store(1, Ordering::Release);
    let loaded = clock.elapsed();
    let stage_oid = pg_sys::Oid::from(seg.header().stage.load(Ordering::Acquire));
    take_stage(target, relid, stage_oid, &stage, rows)?;
    // Where a parallel load's time goes (client_min_messages = debug1).
    pgrx::debug1!(
        "pg_lakesync: parallel load of {}: {} workers loaded {rows} rows in {} ms, the stage taken over in {} ms",
        target.qualified(),
        workers.handles.len(),
        loaded.as_millis(),
        (clock.elapsed() - loaded).as_millis()
    );
    Ok(Some(LoadResult {
        inserted: rows,
        deleted: 0,
        skipped_null_key: skipped,
        superseded: 0,
    }))
}

/// Splits the files among `n` workers by size: the largest first, each to the least loaded.
fn shares(mut files: Vec<(String, i64)>, n: usize) -> Vec<Vec<String>> {
    files.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let mut out: Vec<(i64, Vec<String>)> = (0..n).map(|_| (0, Vec::new())).collect();
    for (path, size) in files {
        let least = out
            .iter_mut()
            .min_by_key(|(bytes, paths)| (*bytes, paths.len()))
            .expect("n > 0");
        least.0 += size.max(1);
        least.1.push(path);
    }
    out.into_iter().map(|(_, p)| p).collect()
}

fn launch(handle: u32, k: usize) -> Option<DynamicBackgroundWorker> {
    let db = unsafe { u32::from(pg_sys::MyDatabaseId) };
    BackgroundWorkerBuilder::new(WORKER_TYPE)
        .set_type(WORKER_TYPE)
        .set_library("pg_lakesync")
        .set_function("lakesync_load_worker_main")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(None)
        .set_argument(Some(pg_sys::Datum::from(handle)))
        .set_extra(&format!("{db} {k}"))
        .set_notify_pid(unsafe { pg_sys::MyProcPid })
        .load_dynamic()
        .ok()
}

/// The leader's workers: told the load is abandoned if the leader leaves before it took the
/// stage over (an ERROR, a cancel); `leader_detached` cancels those still loading.
struct Workers<'a> {
    seg: &'a Segment,
    handles: Vec<DynamicBackgroundWorker>,
}

impl Drop for Workers<'_> {
    fn drop(&mut self) {
        if self.seg.header().finished.load(Ordering::Acquire) != 0 {
            return;
        }
        // Those waiting see it; those loading are cancelled when the segment is detached
        // (`leader_detached`), at the latest as the transaction ends.
        self.seg.header().abandoned.store(1, Ordering::Release);
    }
}

impl Workers<'_> {
    /// Waits until every worker loaded its share: the rows and NULL-key rows skipped, or None
    /// when the stage could not be made (nothing was loaded; the leader loads alone).
    fn wait(&self) -> Result<Option<(u64, u64)>> {
        let header = self.seg.header();
        loop {
            // Every slot's word first, so that a failure is told as it happened, not as the
            // exit of a worker that rolled back because of it.
            let states: Vec<u32> = (0..self.handles.len())
                .map(|k| self.seg.slot(k).state.load(Ordering::Acquire))
                .collect();
            if let Some(k) = states.iter().position(|&st| st == FAILED) {
                self.seg.raise(k);
            }
            if let Some(k) = states.iter().position(|&st| st == UNFIT) {
                // What the workers cannot see (a credential or grant of this transaction, say),
                // the leader can: it loads by itself.
                let (_, message, _, _) = self.seg.error(k);
                pgrx::notice!("pg_lakesync: loading with one backend: load worker {k} cannot read the source: {message}");
                header.abandoned.store(1, Ordering::SeqCst);
                return Ok(None);
            }
            if header.stage_state.load(Ordering::Acquire) == STAGE_FAILED {
                let (_, message, _, _) = self.seg.error(0);
                pgrx::notice!("pg_lakesync: loading with one backend: the parallel load's stage table cannot be created: {message}");
                return Ok(None);
            }
            if let Some(k) = states.iter().position(|&st| st == ROLLED_BACK) {
                return Err(LakeError::Internal(format!(
                    "load worker {k} of the parallel load rolled its share back (was it cancelled? see the server log)"
                )));
            }
            let done = states.iter().filter(|&&st| st == DONE).count();
            for (k, w) in self.handles.iter().enumerate() {
                let gone = matches!(
                    w.pid(),
                    Err(pgrx::bgworkers::BackgroundWorkerStatus::Stopped)
                );
                // Its last word may have come just before it exited: looked at again next poll.
                if gone
                    && matches!(states[k], RUNNING | LOADED)
                    && self.seg.slot(k).state.load(Ordering::Acquire) == states[k]
                {
                    return Err(LakeError::Internal(format!(
                        "load worker {k} of the parallel load ended without finishing its share (see the server log)"
                    )));
                }
            }
            if done == self.handles.len() {
                let rows = (0..done).map(|k| self.seg.slot(k).rows.load(Ordering::Acquire));
                let skipped = (0..done).map(|k| self.seg.slot(k).skipped.load(Ordering::Acquire));
                return Ok(Some((rows.sum(), skipped.sum())));
            }
            nap();
        }
    }
}

/// The target takes over the stage's files, once the stage is checked to be the one worker 0
/// made: the same columns as the target, owned by this role, granted to no one else.
fn take_stage(
    target: &TargetName,
    relid: pg_sys::Oid,
    stage: pg_sys::Oid,
    name: &str,
    rows: u64,
) -> Result<()> {
    unsafe { pg_sys::LockRelationOid(stage, pg_sys::AccessExclusiveLock as pg_sys::LOCKMODE) };
    let problem = Spi::get_one_with_args::<String>(
        "SELECT CASE \
           WHEN s.oid IS NULL THEN 'it is gone' \
           WHEN s.relname OPERATOR(pg_catalog.<>) $3 OR s.relnamespace OPERATOR(pg_catalog.<>) t.relnamespace \
             THEN 'it was renamed or moved' \
           WHEN s.relowner OPERATOR(pg_catalog.<>) $4 \
             OR s.relkind OPERATOR(pg_catalog.<>) 'r' OR s.relpersistence OPERATOR(pg_catalog.<>) t.relpersistence \
             OR s.reltablespace OPERATOR(pg_catalog.<>) t.reltablespace OR s.relam OPERATOR(pg_catalog.<>) t.relam \
             THEN 'it is not the table the load made' \
           WHEN EXISTS (SELECT 1 FROM pg_catalog.aclexplode(s.relacl) a WHERE a.grantee OPERATOR(pg_catalog.<>) s.relowner) \
             OR EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a WHERE a.attrelid OPERATOR(pg_catalog.=) s.oid AND a.attacl IS NOT NULL) \
             THEN 'it was granted to another role' \
           WHEN EXISTS (SELECT a.attnum, a.attname, a.atttypid, a.atttypmod, a.attcollation, a.attisdropped, a.attnotnull \
                          FROM pg_catalog.pg_attribute a WHERE a.attrelid OPERATOR(pg_catalog.=) s.oid AND a.attnum OPERATOR(pg_catalog.>) 0 \
                        EXCEPT SELECT a.attnum, a.attname, a.atttypid, a.atttypmod, a.attcollation, a.attisdropped, a.attnotnull \
                          FROM pg_catalog.pg_attribute a WHERE a.attrelid OPERATOR(pg_catalog.=) t.oid AND a.attnum OPERATOR(pg_catalog.>) 0) \
             OR (SELECT pg_catalog.count(*) FROM pg_catalog.pg_attribute a WHERE a.attrelid OPERATOR(pg_catalog.=) s.oid AND a.attnum OPERATOR(pg_catalog.>) 0) \
                OPERATOR(pg_catalog.<>) (SELECT pg_catalog.count(*) FROM pg_catalog.pg_attribute a WHERE a.attrelid OPERATOR(pg_catalog.=) t.oid AND a.attnum OPERATOR(pg_catalog.>) 0) \
             THEN 'its columns are not the table''s' \
           ELSE '' END \
         FROM pg_catalog.pg_class t LEFT JOIN pg_catalog.pg_class s ON s.oid OPERATOR(pg_catalog.=) $2 \
         WHERE t.oid OPERATOR(pg_catalog.=) $1",
        &[
            relid.into(),
            stage.into(),
            name.into(),
            unsafe { pg_sys::GetUserId() }.into(),
        ],
    )
    .map_err(|e| LakeError::Internal(format!("cannot inspect the parallel load's stage: {e}")))?
    .unwrap_or_else(|| "the table is gone".into());
    if !problem.is_empty() {
        return Err(LakeError::Internal(format!(
            "the stage table \"{}\" of the parallel load of {} cannot be used: {problem}",
            name,
            target.qualified()
        )));
    }
    unsafe {
        super::swap::take_over(relid, stage, &[]);
        // The workers' inserts were counted for the stage: count them for the table, so that
        // autovacuum analyzes (and later vacuums) it as after any load.
        let rel = pgrx::PgRelation::open(relid);
        pg_sys::pgstat_count_heap_insert(rel.as_ptr(), rows as pg_sys::PgStat_Counter);
    }
    Ok(())
}

/// Drops the stages in `schema` that no load is using any more: made by this extension (its
/// comment), owned by a role this one is a member of, and named after a transaction that is no
/// longer running (their worker 0 died before it could drop them). One that is in use, or will
/// not go (a view on it, say), is left for a later load, logged.
fn drop_orphans(schema: &str) -> Result<()> {
    // CASE: the name is tested before pg_xact_status reads it (a future XID is an ERROR).
    let orphans: Vec<(pg_sys::Oid, String)> = Spi::connect(|c| {
        let rows = c.select(
            "SELECT c.oid, c.relname::pg_catalog.text \
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
             WHERE n.nspname OPERATOR(pg_catalog.=) $1 AND c.relkind OPERATOR(pg_catalog.=) 'r' \
               AND CASE WHEN c.relname OPERATOR(pg_catalog.~) $2 \
                          AND pg_catalog.pg_has_role(c.relowner, 'USAGE') \
                          AND pg_catalog.obj_description(c.oid, 'pg_class') OPERATOR(pg_catalog.=) $3 \
                          AND pg_catalog.substr(c.relname, $4)::pg_catalog.numeric \
                              OPERATOR(pg_catalog.<) pg_catalog.pg_snapshot_xmin(pg_catalog.pg_current_snapshot())::pg_catalog.text::pg_catalog.numeric \
                   THEN COALESCE(pg_catalog.pg_xact_status(pg_catalog.substr(c.relname, $4)::pg_catalog.xid8) \
                        OPERATOR(pg_catalog.<>) 'in progress', true) \
                   ELSE false END",
            None,
            &[
                schema.into(),
                format!("^{STAGE_PREFIX}[0-9]{{1,19}}$").into(),
                STAGE_COMMENT.into(),
                (STAGE_PREFIX.len() as i32 + 1).into(),
            ],
        )?;
        let mut out = Vec::new();
        for r in rows {
            if let (Some(oid), Some(name)) = (r.get::<pg_sys::Oid>(1)?, r.get::<String>(2)?) {
                out.push((oid, name));
            }
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .map_err(|e| LakeError::Internal(format!("cannot look for orphaned load stages: {e}")))?;
    for (oid, name) in orphans {
        let dropped = crate::subxact::run(true, || Ok(unsafe { drop_relation(oid, false) }));
        match dropped {
            Ok(Ok(true)) => pgrx::log!(
                "pg_lakesync: dropped {schema}.{name}, the stage of a parallel load that ended without cleaning up"
            ),
            Ok(_) => pgrx::log!(
                "pg_lakesync: {schema}.{name}, the stage of an ended parallel load, is in use: left for later"
            ),
            Err(e) => pgrx::log!(
                "pg_lakesync: cannot drop {schema}.{name}, the stage of an ended parallel load: {}",
                crate::subxact::message(&e)
            ),
        }
    }
    Ok(())
}

/// Drops the relation `oid` if it still exists once its ACCESS EXCLUSIVE lock is held (by OID
/// under the lock: no name to race, no event trigger); whether it did. Without `wait`, only if
/// the lock is free now.
unsafe fn drop_relation(oid: pg_sys::Oid, wait: bool) -> bool {
    let mode = pg_sys::AccessExclusiveLock as pg_sys::LOCKMODE;
    if wait {
        pg_sys::LockRelationOid(oid, mode);
    } else if !pg_sys::ConditionalLockRelationOid(oid, mode) {
        return false;
    }
    pg_sys::AcceptInvalidationMessages();
    let tuple = pg_sys::SearchSysCache1(
        pg_sys::SysCacheIdentifier::RELOID as i32,
        pg_sys::Datum::from(oid),
    );
    if tuple.is_null() {
        return false;
    }
    pg_sys::ReleaseSysCache(tuple);
    super::swap::drop_internally(oid);
    true
}

/// The dynamic shared memory of one parallel load, as the leader or a worker maps it.
struct Segment {
    seg: *mut pg_sys::dsm_segment,
    handle: u32,
    /// Bytes after the header, for the job.
    room: usize,
}

impl Segment {
    /// The leader's: its transaction's resource owner detaches it if the load fails; on
    /// success `Drop` does (a subtransaction's owner would warn of a leak at its commit).
    fn create(room: usize) -> Result<Segment> {
        let size = std::mem::size_of::<Header>() + room;
        unsafe {
            let seg = pg_sys::dsm_create(size, 0);
            let addr = pg_sys::dsm_segment_address(seg) as *mut u8;
            std::ptr::write_bytes(addr, 0, std::mem::size_of::<Header>());
            (*(addr as *const Header))
                .magic
                .store(MAGIC, Ordering::Release);
            Ok(Segment {
                seg,
                handle: pg_sys::dsm_segment_handle(seg),
                room,
            })
        }
    }

    fn attach(handle: u32) -> Option<Segment> {
        unsafe {
            let seg = pg_sys::dsm_attach(handle);
            if seg.is_null() {
                return None;
            }
            // Mapped for the life of this process, whatever transactions come and go.
            pg_sys::dsm_pin_mapping(seg);
            Some(Segment {
                seg,
                handle,
                room: 0,
            })
        }
    }

    /// Where the job's JSON lies: after the header, in the segment's own bytes.
    fn job_area(&self) -> *mut u8 {
        unsafe {
            (pg_sys::dsm_segment_address(self.seg) as *mut u8).add(std::mem::size_of::<Header>())
        }
    }

    fn header(&self) -> &Header {
        unsafe { &*(pg_sys::dsm_segment_address(self.seg) as *const Header) }
    }

    fn slot(&self, k: usize) -> &Slot {
        &self.header().slots[k]
    }

    fn publish(&self, job: &Job) -> Result<()> {
        let json = serde_json::to_vec(job)
            .map_err(|e| LakeError::Internal(format!("cannot write the load's job: {e}")))?;
        if json.len() > self.room {
            return Err(LakeError::Internal(format!(
                "the parallel load's file list is too long ({} bytes)",
                json.len()
            )));
        }
        let header = self.header();
        unsafe {
            let at = self.job_area();
            std::ptr::copy_nonoverlapping(json.as_ptr(), at, json.len());
        }
        header.job_len.store(json.len() as u32, Ordering::Relaxed);
        header
            .workers
            .store(job.shares.len() as u32, Ordering::Relaxed);
        header.ready.store(1, Ordering::Release);
        Ok(())
    }

    fn job(&self) -> Option<Job> {
        let header = self.header();
        let len = header.job_len.load(Ordering::Acquire) as usize;
        let bytes = unsafe {
            let at = self.job_area() as *const u8;
            std::slice::from_raw_parts(at, len)
        };
        serde_json::from_slice(bytes).ok()
    }

    /// Writes a failure into worker `k`'s slot (truncated to fit), its state unchanged.
    fn write_error(&self, k: usize, code: i32, message: &str, detail: &str, hint: &str) {
        let slot = self.slot(k);
        let mut text = Vec::with_capacity(MESSAGE_BYTES);
        for part in [message, detail, hint] {
            let room = MESSAGE_BYTES.saturating_sub(text.len() + 1);
            let mut cut = part.len().min(room);
            while !part.is_char_boundary(cut) {
                cut -= 1;
            }
            text.extend_from_slice(&part.as_bytes()[..cut]);
            text.push(0);
        }
        unsafe {
            let at = slot.error.get() as *mut u8;
            std::ptr::copy_nonoverlapping(text.as_ptr(), at, text.len().min(MESSAGE_BYTES));
        }
        slot.sqlstate.store(code, Ordering::Relaxed);
    }

    /// Worker `k`'s failure: SQLSTATE, message, detail, hint.
    fn error(&self, k: usize) -> (i32, String, String, String) {
        let slot = self.slot(k);
        // Read only after `state` (or `stage_state`) said it was written.
        let bytes = unsafe { &*slot.error.get() };
        let mut parts = bytes
            .split(|&b| b == 0)
            .map(|p| String::from_utf8_lossy(p).into_owned());
        (
            slot.sqlstate.load(Ordering::Acquire),
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
        )
    }

    /// Raises worker `k`'s failure in the leader, as the worker saw it.
    fn raise(&self, k: usize) -> ! {
        let (code, message, detail, hint) = self.error(k);
        let code = PgSqlErrorCode::from(code);
        let mut report = pgrx::pg_sys::panic::ErrorReport::new(code, message, "pg_lakesync");
        if !detail.is_empty() {
            report = report.set_detail(detail);
        }
        if !hint.is_empty() {
            report = report.set_hint(hint);
        }
        report.report(pgrx::PgLogLevel::ERROR);
        unreachable!()
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        // While an ERROR unwinds, the transaction's abort detaches it.
        if !std::thread::panicking() {
            unsafe { pg_sys::dsm_detach(self.seg) };
        }
    }
}

/// A load worker's life (see `lakesync_load_worker_main`): its share into the stage, and for
/// worker 0 the stage itself and its cleanup.
pub fn work(handle: u32, k: usize) {
    let Some(seg) = Segment::attach(handle) else {
        pgrx::log!("pg_lakesync: load worker {k}: the load is gone");
        return;
    };
    let header = seg.header();
    if header.magic.load(Ordering::Acquire) != MAGIC {
        pgrx::log!("pg_lakesync: load worker {k}: the load is gone");
        return;
    }
    if !wait_until(header, || header.ready.load(Ordering::Acquire) != 0) {
        return;
    }
    if k >= header.workers.load(Ordering::Acquire) as usize {
        return; // started, but the load went on without this worker
    }
    let Some(job) = seg.job() else {
        pgrx::log!("pg_lakesync: load worker {k}: cannot read the job");
        return;
    };
    seg.slot(k)
        .pid
        .store(unsafe { pg_sys::MyProcPid }, Ordering::SeqCst);
    // However this worker ends, no signal meant for it may reach a later owner of its pid.
    let _pid = ClearPid(seg.slot(k));
    // SeqCst with `leader_detached`: either it sees this pid, or this sees its flag.
    if header.abandoned.load(Ordering::SeqCst) != 0 {
        return;
    }
    // No timeout of the server's or the database's may end a wait the leader counts on.
    in_transaction(false, || {
        for setting in [
            "lock_timeout",
            "statement_timeout",
            "idle_in_transaction_session_timeout",
        ] {
            let _ = Spi::run(&format!("SET {setting} = 0"));
        }
    });
    // The syncing role's rights from here on: it owns the stage and what is read is its to read.
    unsafe {
        pg_sys::SetUserIdAndSecContext(
            pg_sys::Oid::from(job.user),
            pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32,
        );
    }
    if k == 0 {
        match in_transaction(true, || caught(|| create_stage(&job))) {
            Ok(oid) => {
                header.stage.store(u32::from(oid), Ordering::Relaxed);
                header.stage_state.store(STAGE_MADE, Ordering::Release);
            }
            Err((code, message, detail, hint)) => {
                // Not FAILED: the leader then loads by itself (it reads the text for its NOTICE).
                seg.write_error(0, code, &message, &detail, &hint);
                header.stage_state.store(STAGE_FAILED, Ordering::Release);
                return;
            }
        }
    } else if !wait_until(header, || {
        header.stage_state.load(Ordering::Acquire) != STAGE_PENDING
    }) {
        return;
    }
    if header.stage_state.load(Ordering::Acquire) != STAGE_MADE {
        return;
    }
    let stage = pg_sys::Oid::from(header.stage.load(Ordering::Relaxed));
    let slot = seg.slot(k);
    if header.abandoned.load(Ordering::SeqCst) != 0 {
        if k == 0 {
            clean_up(&job, stage);
        }
        return;
    }
    let outcome = in_transaction(true, || {
        let prepared = match caught(|| prepare(&job, k)) {
            Ok(p) => p,
            Err(f) => return Err((UNFIT, f)),
        };
        caught(|| {
            let (rows, skipped) = copy_share(&job, k, stage, prepared)?;
            slot.rows.store(rows, Ordering::Relaxed);
            slot.skipped.store(skipped, Ordering::Relaxed);
            slot.state.store(LOADED, Ordering::Release);
            // Commit with the others, not before: a snapshot taken meanwhile sees all of the
            // shares or none (but for the moments between the commits).
            all_loaded(&seg)
        })
        .map_err(|f| (FAILED, f))
    });
    match outcome {
        Ok(()) => slot.state.store(DONE, Ordering::Release),
        // Another's failure, or the leader gave up: this share was rolled back.
        Err((_, f)) if slot.state.load(Ordering::Acquire) == LOADED => {
            pgrx::debug1!(
                "pg_lakesync: load worker {k} rolled back its share: {}",
                f.1
            );
            slot.state.store(ROLLED_BACK, Ordering::Release);
        }
        Err((state, (code, message, detail, hint))) => {
            seg.write_error(k, code, &message, &detail, &hint);
            slot.state.store(state, Ordering::Release);
        }
    }
    if k == 0 {
        clean_up(&job, stage);
    }
}

/// Waits until `ready` holds; false when the leader gave up (or left) first.
fn wait_until(header: &Header, ready: impl Fn() -> bool) -> bool {
    loop {
        if ready() {
            return true;
        }
        if header.abandoned.load(Ordering::Acquire) != 0 {
            return false;
        }
        nap();
    }
}

/// Waits until every worker has loaded its share; an error when one failed or the leader left.
fn all_loaded(seg: &Segment) -> Result<()> {
    // Once loaded, only the leader's word (or a terminate) ends the wait, not a cancel: a
    // share rolled back after the others committed would be a load that never finishes.
    let _holdoff = HoldCancel::new();
    let header = seg.header();
    let n = header.workers.load(Ordering::Acquire) as usize;
    loop {
        let mut loaded = 0;
        for k in 0..n {
            match seg.slot(k).state.load(Ordering::Acquire) {
                LOADED | DONE => loaded += 1,
                FAILED | UNFIT | ROLLED_BACK => {
                    return Err(LakeError::Internal(format!(
                        "load worker {k} of the parallel load failed"
                    )))
                }
                _ => {}
            }
        }
        if loaded == n {
            // A cancel held off meanwhile must not strike between here and the commit.
            unsafe { pg_sys::QueryCancelPending = 0 };
            return Ok(());
        }
        if header.abandoned.load(Ordering::SeqCst) != 0 {
            return Err(LakeError::Internal(
                "the sync of the parallel load ended".into(),
            ));
        }
        nap();
    }
}

/// Holds off query cancels while it lives (as HOLD_CANCEL_INTERRUPTS does).
struct HoldCancel;
impl HoldCancel {
    fn new() -> Self {
        unsafe { pg_sys::QueryCancelHoldoffCount += 1 };
        HoldCancel
    }
}
impl Drop for HoldCancel {
    fn drop(&mut self) {
        unsafe { pg_sys::QueryCancelHoldoffCount -= 1 };
    }
}

/// Clears a worker's pid in its slot when the worker is done.
struct ClearPid<'a>(&'a Slot);
impl Drop for ClearPid<'_> {
    fn drop(&mut self) {
        self.0.pid.store(0, Ordering::SeqCst);
    }
}

/// The leader's segment is detached before it took the stage over — its load failed, was
/// cancelled, or its backend is exiting: tell the workers, and cancel those still loading.
#[pg_guard]
unsafe extern "C-unwind" fn leader_detached(seg: *mut pg_sys::dsm_segment, _arg: pg_sys::Datum) {
    let header = &*(pg_sys::dsm_segment_address(seg) as *const Header);
    if header.finished.load(Ordering::Acquire) != 0 {
        return;
    }
    header.abandoned.store(1, Ordering::SeqCst);
    for slot in &header.slots {
        let pid = slot.pid.load(Ordering::SeqCst);
        if pid > 0 && slot.state.load(Ordering::Acquire) == RUNNING {
            libc::kill(pid, libc::SIGINT);
        }
    }
}

/// Sleeps briefly, staying responsive to a cancel or terminate.
fn nap() {
    super::swap::sleep_interruptibly(POLL);
}

/// Runs `f` in a transaction of its own (with a snapshot if `snapshot`), committed at its end.
fn in_transaction<R>(snapshot: bool, f: impl FnOnce() -> R) -> R {
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        if snapshot {
            pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
        }
        let r = f();
        if snapshot {
            pg_sys::PopActiveSnapshot();
        }
        pg_sys::CommitTransactionCommand();
        r
    }
}

type Failure = (i32, String, String, String);

/// Runs `f` in a subtransaction; an ERROR (ours or Postgres') comes back as SQLSTATE and texts.
fn caught<T>(f: impl FnOnce() -> Result<T>) -> std::result::Result<T, Failure> {
    use pgrx::pg_sys::panic::CaughtError;
    let report = |r: &pgrx::pg_sys::panic::ErrorReportWithLevel| {
        (
            r.sql_error_code() as i32,
            r.message().to_string(),
            r.detail().unwrap_or("").to_string(),
            r.hint().unwrap_or("").to_string(),
        )
    };
    match crate::subxact::run(true, || Ok(f().unwrap_or_else(|e| e.raise()))) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err((
            e.sqlstate() as i32,
            e.to_string(),
            String::new(),
            e.hint().unwrap_or_default(),
        )),
        Err(CaughtError::PostgresError(r) | CaughtError::ErrorReport(r)) => Err(report(&r)),
        Err(CaughtError::RustPanic { ereport, .. }) => Err(report(&ereport)),
    }
}

fn create_stage(job: &Job) -> Result<pg_sys::Oid> {
    let table = format!("{}.{}", quote_ident(&job.schema), quote_ident(&job.stage));
    let run = |sql: &str| Spi::run(sql).map_err(|e| LakeError::Internal(format!("{sql}: {e}")));
    run("SET LOCAL search_path = pg_catalog, pg_temp")?;
    run("SET LOCAL default_tablespace = ''")?;
    run(&format!(
        "CREATE TABLE {table} ({}) USING heap",
        job.column_defs
    ))?;
    run(&format!(
        "COMMENT ON TABLE {table} IS {}",
        pgrx::spi::quote_literal(STAGE_COMMENT)
    ))?;
    // Default privileges may have granted it to others: nobody else may write what the synced
    // table takes over.
    let grantees: Vec<String> = Spi::connect(|c| {
        let rows = c.select(
            "SELECT DISTINCT CASE WHEN a.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC' \
                    ELSE pg_catalog.quote_ident(r.rolname) END \
             FROM pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) a \
             LEFT JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) a.grantee \
             WHERE c.oid OPERATOR(pg_catalog.=) $1::pg_catalog.regclass \
               AND a.grantee OPERATOR(pg_catalog.<>) c.relowner",
            None,
            &[table.as_str().into()],
        )?;
        let mut out = Vec::new();
        for r in rows {
            out.extend(r.get::<String>(1)?);
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .map_err(|e| LakeError::Internal(format!("cannot read the stage's grants: {e}")))?;
    for g in grantees {
        run(&format!("REVOKE ALL ON {table} FROM {g}"))?;
    }
    crate::catalog::relation_oid(&table)?
        .ok_or_else(|| LakeError::Internal("the stage table is not visible".into()))
}

/// What a worker reads its share with: the source at the sync's version, and the columns as
/// the sync planned them.
struct Prepared {
    source: DeltaSource,
    plan: ColumnsPlan,
    null_bytes: crate::options::NullBytes,
}

fn prepare(job: &Job, k: usize) -> Result<Prepared> {
    Spi::run("SET LOCAL search_path = pg_catalog, pg_temp")
        .map_err(|e| LakeError::Internal(format!("cannot set search_path: {e}")))?;
    let location = crate::credentials::locate(&job.source, &job.owner, job.credential.as_deref())?;
    let version = job.version;
    let source = crate::offload::run(move || crate::source::open(&location, Some(version)))?;
    let opts = crate::options::SyncOptions::parse(&job.options)?;
    let plan = crate::plan::plan_columns(&source, &opts, &job.primary_key)?;
    let names: Vec<String> = plan.columns.iter().map(|c| c.name.clone()).collect();
    if names != job.columns {
        return Err(LakeError::Internal(format!(
            "load worker {k} planned columns {names:?}, the sync {:?}",
            job.columns
        )));
    }
    Ok(Prepared {
        source,
        plan,
        null_bytes: opts.null_bytes,
    })
}

/// COPYs worker `k`'s share of the files into the stage: the rows and NULL-key rows skipped.
fn copy_share(job: &Job, k: usize, stage: pg_sys::Oid, p: Prepared) -> Result<(u64, u64)> {
    let names: Vec<String> = p.plan.columns.iter().map(|c| c.name.clone()).collect();
    let paths: HashSet<String> = job.shares[k].iter().cloned().collect();
    let stream = crate::source::files::start_files(
        p.source,
        paths,
        p.plan.columns.clone(),
        p.plan.key.clone(),
        p.null_bytes,
    );
    let (rows, stats) = super::copy::copy_from_stream(stage, &names, stream)?;
    Ok((rows, stats.skipped_null_key))
}

/// Worker 0, its share loaded: waits for the syncing transaction to end, then drops the stage
/// if it is still there (the sync did not take it over: it failed, was cancelled or died).
fn clean_up(job: &Job, stage: pg_sys::Oid) {
    let leader = pg_sys::TransactionId::from_inner(job.leader_xid);
    // Never while the sync's transaction runs: a cancel or an error only interrupts the wait.
    while in_transaction(true, || unsafe {
        pg_sys::TransactionIdIsInProgress(leader)
    }) {
        let waited = in_transaction(false, || {
            caught(|| {
                unsafe {
                    pg_sys::XactLockTableWait(
                        leader,
                        std::ptr::null_mut(),
                        std::ptr::null_mut(),
                        pg_sys::XLTW_Oper::XLTW_None,
                    )
                };
                Ok(())
            })
        });
        if let Err((_, message, _, _)) = waited {
            pgrx::debug1!("pg_lakesync: load worker 0 waits again for its sync to end: {message}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // The leader's cancel is for the load, not for this: a late one must not stop the drop.
    unsafe { pg_sys::QueryCancelPending = 0 };
    let dropped = in_transaction(true, || {
        caught(|| {
            // Only the table worker 0 made: the OID still has the stage's name.
            let ours = Spi::get_one_with_args::<bool>(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c \
                 WHERE c.oid OPERATOR(pg_catalog.=) $1 AND c.relname OPERATOR(pg_catalog.=) $2)",
                &[stage.into(), job.stage.as_str().into()],
            )
            .map_err(|e| LakeError::Internal(format!("cannot look up the stage: {e}")))?;
            Ok(ours == Some(true) && unsafe { drop_relation(stage, true) })
        })
    });
    match dropped {
        Ok(true) => pgrx::debug1!(
            "pg_lakesync: dropped the stage {} of a parallel load that did not finish",
            job.stage
        ),
        Ok(false) => {}
        Err((_, message, _, _)) => pgrx::log!(
            "pg_lakesync: cannot drop the stage {}.{} of a parallel load: {message}",
            job.schema,
            job.stage
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::shares;

    fn files(sizes: &[i64]) -> Vec<(String, i64)> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &s)| (format!("f{i}"), s))
            .collect()
    }

    #[test]
    fn shares_balance_bytes_largest_first() {
        let got = shares(files(&[10, 70, 20, 30, 40]), 2);
        // 70 | 40 → 40+30=70 | 70+20=90 | 70+10=80
        assert_eq!(got, vec![vec!["f1", "f2"], vec!["f4", "f3", "f0"]]);
    }

    #[test]
    fn shares_give_every_worker_a_file_and_keep_every_file_once() {
        let got = shares(files(&[0, 0, 0, 5]), 3);
        assert!(got.iter().all(|s| !s.is_empty()));
        let mut all: Vec<_> = got.concat();
        all.sort();
        assert_eq!(all, vec!["f0", "f1", "f2", "f3"]);
    }
}
