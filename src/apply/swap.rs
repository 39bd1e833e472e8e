//! A full replace by swapping files: the new rows are COPYed, frozen, into a new heap shaped
//! like the target (dropped columns too) and its indexes are built there, while readers go on
//! reading the old rows; then, under an ACCESS EXCLUSIVE lock held only from the swap to the
//! commit, the target takes over the new heap, TOAST table and index files. The target keeps its
//! OID, so views, grants, policies, user indexes and comments stay; the old files go at commit.
//! No dead tuples are left, and no DELETE or index insert per row is paid. This is the swap
//! CLUSTER makes (cluster.c `swap_relation_files`, TOAST swapped by links), on a heap we fill.
//!
//! Where a swap would skip something a row-by-row replace does — a trigger, a foreign key, a
//! CHECK, a publication's change stream, a default of the user's own column — `why_in_place`
//! says so and the sync replaces the rows in place instead.

use super::copy;
use super::snapshot::{catching_duplicates, LoadResult};
use crate::error::{LakeError, Result};
use crate::plan::target::TargetName;
use crate::plan::ColumnsPlan;
use crate::source::scan::ScanStream;
use pgrx::pg_sys;
use pgrx::pg_sys::panic::{CaughtError, ErrorReport};
use pgrx::prelude::*;
use pgrx::{PgLogLevel, PgSqlErrorCode};
use std::time::{Duration, Instant};

unsafe extern "C-unwind" {
    // commands/cluster.h, which pgrx does not bind: the new heap CLUSTER and REFRESH
    // MATERIALIZED VIEW fill, named pg_temp_<oid> in the old heap's schema.
    fn make_new_heap(
        old_heap: pg_sys::Oid,
        tablespace: pg_sys::Oid,
        access_method: pg_sys::Oid,
        persistence: std::ffi::c_char,
        lockmode: pg_sys::LOCKMODE,
    ) -> pg_sys::Oid;
}

/// How long the swap only tries for its lock (so readers never wait behind it) before it
/// first queues for it, and how long it then tries between brief queued attempts.
const POLITE_WAIT: Duration = Duration::from_secs(2);
const TRY_BETWEEN_QUEUES: Duration = Duration::from_secs(1);
/// How long the first queued attempt lasts: the longest a reader waits behind the swap, unless
/// the table is held without a break for longer (then each attempt doubles).
const QUEUED_SLICE: Duration = Duration::from_millis(200);

/// Why the target's rows must be replaced in place rather than swapped, if they must.
pub fn why_in_place(relid: pg_sys::Oid, plan: &ColumnsPlan) -> Result<Option<String>> {
    if plan.timeseries.is_some() {
        return Ok(Some(
            "timeseries_key dedupes through a staging table".into(),
        ));
    }
    if !copy::freeze_allowed() {
        return Ok(Some(
            "this transaction holds older snapshots or open cursors, so the rows cannot be written frozen"
                .into(),
        ));
    }
    let in_use = unsafe {
        let rel = pgrx::PgRelation::open(relid);
        (*rel.as_ptr()).rd_refcnt > 1 || pg_sys::AfterTriggerPendingOnRel(relid)
    };
    if in_use {
        return Ok(Some("the table is in use by this session".into()));
    }
    let columns: Vec<String> = plan.columns.iter().map(|c| c.name.clone()).collect();
    // The first that holds, in this order.
    let reason = Spi::get_one_with_args::<String>(
        "SELECT CASE \
           WHEN c.relkind OPERATOR(pg_catalog.<>) 'r' OR c.relpersistence OPERATOR(pg_catalog.=) 't' \
             THEN 'it is not a plain table' \
           WHEN c.relam OPERATOR(pg_catalog.<>) (SELECT oid FROM pg_catalog.pg_am WHERE amname OPERATOR(pg_catalog.=) 'heap') \
             THEN 'it is not a heap table' \
           WHEN c.relispartition OR c.relhassubclass \
             OR EXISTS (SELECT 1 FROM pg_catalog.pg_inherits WHERE inhrelid OPERATOR(pg_catalog.=) c.oid) \
             THEN 'it is part of an inheritance tree' \
           WHEN NOT pg_catalog.pg_has_role(c.relowner, 'USAGE') \
             THEN 'the syncing role does not own it' \
           WHEN NOT pg_catalog.has_table_privilege(c.oid, 'INSERT') \
             OR NOT pg_catalog.has_table_privilege(c.oid, 'DELETE') \
             THEN 'the syncing role may not INSERT and DELETE all of it' \
           WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t WHERE t.tgrelid OPERATOR(pg_catalog.=) c.oid \
                          AND t.tgname OPERATOR(pg_catalog.<>) 'lakesync_read_only') \
             THEN 'it has triggers or foreign keys' \
           WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_constraint k WHERE k.conrelid OPERATOR(pg_catalog.=) c.oid \
                          AND k.contype OPERATOR(pg_catalog.=) ANY ('{c,f,x}'::pg_catalog.\"char\"[])) \
             OR EXISTS (SELECT 1 FROM pg_catalog.pg_constraint k WHERE k.confrelid OPERATOR(pg_catalog.=) c.oid) \
             THEN 'it has CHECK, exclusion or foreign key constraints' \
           WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_publication_tables p \
                          WHERE p.schemaname OPERATOR(pg_catalog.=) n.nspname AND p.tablename OPERATOR(pg_catalog.=) c.relname) \
             THEN 'it is published for logical replication' \
           WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class ic ON ic.oid OPERATOR(pg_catalog.=) i.indexrelid \
                          WHERE i.indrelid OPERATOR(pg_catalog.=) c.oid \
                            AND (ic.reltablespace OPERATOR(pg_catalog.<>) 0 OR NOT i.indisvalid OR NOT i.indisready)) \
             THEN 'an index of it is in another tablespace or not valid' \
           WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a WHERE a.attrelid OPERATOR(pg_catalog.=) c.oid \
                          AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped \
                          AND (a.atthasdef OR a.attidentity OPERATOR(pg_catalog.<>) '' OR a.attgenerated OPERATOR(pg_catalog.<>) '') \
                          AND NOT a.attname OPERATOR(pg_catalog.=) ANY ($2::pg_catalog.name[])) \
             THEN 'a column of its own has a default, identity or generation expression' \
           WHEN pg_catalog.current_setting('wal_level') OPERATOR(pg_catalog.=) 'minimal' \
             THEN 'wal_level is minimal' \
           WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_replication_slots r \
                          WHERE r.slot_type OPERATOR(pg_catalog.=) 'logical' \
                            AND r.database OPERATOR(pg_catalog.=) pg_catalog.current_database()) \
             THEN 'a logical replication slot decodes this database (it must see the rows)' \
           WHEN pg_catalog.current_setting('default_tablespace') OPERATOR(pg_catalog.<>) '' \
             THEN 'default_tablespace is set (the copied indexes would move there)' \
           WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_event_trigger e \
                          WHERE e.evtenabled OPERATOR(pg_catalog.<>) 'D' \
                            AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d \
                                 WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_event_trigger'::pg_catalog.regclass \
                                   AND d.objid OPERATOR(pg_catalog.=) e.oid AND d.deptype OPERATOR(pg_catalog.=) 'e')) \
             THEN 'an event trigger would see the index builds' \
           ELSE '' END \
         FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
         WHERE c.oid OPERATOR(pg_catalog.=) $1",
        &[relid.into(), columns.into()],
    )
    .map_err(|e| LakeError::Internal(format!("cannot inspect the target table: {e}")))?
    .unwrap_or_default();
    Ok((!reason.is_empty()).then_some(reason))
}

/// Replaces every row of the target with the rows of `stream` by building a new heap and
/// swapping it in (see the module's comment). The caller checked `why_in_place`.
pub fn load(
    target: &TargetName,
    relid: pg_sys::Oid,
    plan: &ColumnsPlan,
    stream: ScanStream,
    old_rows: Option<u64>,
) -> Result<LoadResult> {
    // Applications' writes wait (they would be lost in the swap); reads go on.
    unsafe { pg_sys::LockRelationOid(relid, pg_sys::ExclusiveLock as pg_sys::LOCKMODE) };
    let clock = std::time::Instant::now();
    let names: Vec<String> = plan.columns.iter().map(|c| c.name.clone()).collect();
    let (shadow, inserted, stats) =
        copy::copy_into_fresh(&target.qualified(), &names, stream, || unsafe {
            (new_heap(relid), true)
        })?;
    let copied = clock.elapsed();
    let pairs = catching_duplicates(target, plan, || build_indexes(relid, shadow))?;
    let indexed = clock.elapsed();
    // The rows replaced: as the catalog knows them for a read-only table (a count of 10 M rows
    // costs a second), else counted while no writer can change them.
    let deleted = match old_rows {
        Some(n) => n,
        None => Spi::get_one::<i64>(&format!(
            "SELECT pg_catalog.count(*) FROM {}",
            target.qualified()
        ))
        .map_err(|e| LakeError::Internal(format!("cannot count the old rows: {e}")))?
        .unwrap_or(0) as u64,
    };
    let counted = clock.elapsed();
    lock_politely(target, relid)?;
    let locked = clock.elapsed();
    crate::debug::pause_point("swap");
    unsafe { take_over(relid, shadow, &pairs) };
    // Where a replace's time goes (client_min_messages = debug1).
    let ms = |d: std::time::Duration| d.as_millis();
    pgrx::debug1!(
        "pg_lakesync: swap of {}: rows copied {} ms, {} indexes built {} ms, old rows {} ms, \
         ACCESS EXCLUSIVE waited {} ms, files swapped {} ms",
        target.qualified(),
        ms(copied),
        pairs.len(),
        ms(indexed - copied),
        ms(counted - indexed),
        ms(locked - counted),
        ms(clock.elapsed() - locked),
    );
    Ok(LoadResult {
        inserted,
        deleted,
        skipped_null_key: stats.skipped_null_key,
        superseded: 0,
    })
}

/// The target `relid` takes the files of `shadow` (heap, TOAST table and the index files of
/// `pairs`, as (index, its copy)), and the shadow, now holding the old files, is dropped: they go
/// at commit. The caller holds ACCESS EXCLUSIVE on the target, and the shadow's rows fit it.
pub(super) unsafe fn take_over(
    relid: pg_sys::Oid,
    shadow: pg_sys::Oid,
    pairs: &[(pg_sys::Oid, pg_sys::Oid)],
) {
    swap_files(relid, shadow);
    for &(index, shadow_index) in pairs {
        swap_files(index, shadow_index);
    }
    // The shadow now holds the old files (and, by the swapped links, the old TOAST table):
    // dropping it removes them at commit.
    let old_toast = toast_of(shadow);
    drop_internally(shadow);
    // The new TOAST table takes the conventional name pg_toast_<table oid>, freed above.
    let new_toast = toast_of(relid);
    if new_toast != pg_sys::InvalidOid && old_toast != pg_sys::InvalidOid {
        rename_toast(relid, new_toast);
    }
}

/// Drops the relation `oid` as the system's own work (no event trigger sees it; RESTRICT: a
/// dependent object of someone else's stops it), visible to the next command.
pub(super) unsafe fn drop_internally(oid: pg_sys::Oid) {
    let object = pg_sys::ObjectAddress {
        classId: pg_sys::RelationRelationId,
        objectId: oid,
        objectSubId: 0,
    };
    pg_sys::performDeletion(
        &object,
        pg_sys::DropBehavior::DROP_RESTRICT,
        pg_sys::PERFORM_DELETION_INTERNAL as i32,
    );
    pg_sys::CommandCounterIncrement();
}

/// A new, empty heap like the target's (same columns, dropped ones too, same tablespace,
/// persistence and TOAST), created in the current subtransaction so COPY may freeze into it.
unsafe fn new_heap(relid: pg_sys::Oid) -> pg_sys::Oid {
    let rel = pgrx::PgRelation::open(relid);
    let form = (*rel.as_ptr()).rd_rel;
    let (tablespace, am, persistence) =
        ((*form).reltablespace, (*form).relam, (*form).relpersistence);
    drop(rel);
    pg_sys::submodules::ffi::pg_guard_ffi_boundary(|| {
        make_new_heap(
            relid,
            tablespace,
            am,
            persistence,
            pg_sys::ExclusiveLock as pg_sys::LOCKMODE,
        )
    })
}

/// Builds a copy of every index of `relid` on `shadow`; returns (index, its copy) pairs.
fn build_indexes(
    relid: pg_sys::Oid,
    shadow: pg_sys::Oid,
) -> Result<Vec<(pg_sys::Oid, pg_sys::Oid)>> {
    // pg_get_indexdef names the table schema-qualified, each part as quote_ident quotes it.
    let defs: Vec<(pg_sys::Oid, String, String, String, String)> = Spi::connect(|c| {
        let rows = c.select(
            "SELECT i.indexrelid, pg_catalog.pg_get_indexdef(i.indexrelid), \
                    pg_catalog.quote_ident(ic.relname), \
                    pg_catalog.quote_ident(n.nspname) OPERATOR(pg_catalog.||) '.' \
                      OPERATOR(pg_catalog.||) pg_catalog.quote_ident(c.relname), \
                    ic.relname::pg_catalog.text \
             FROM pg_catalog.pg_index i \
             JOIN pg_catalog.pg_class ic ON ic.oid OPERATOR(pg_catalog.=) i.indexrelid \
             JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) i.indrelid \
             JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
             WHERE i.indrelid OPERATOR(pg_catalog.=) $1 ORDER BY i.indexrelid",
            None,
            &[relid.into()],
        )?;
        let mut out = Vec::new();
        for r in rows {
            out.push((
                r.get::<pg_sys::Oid>(1)?.unwrap_or_default(),
                r.get::<String>(2)?.unwrap_or_default(),
                r.get::<String>(3)?.unwrap_or_default(),
                r.get::<String>(4)?.unwrap_or_default(),
                r.get::<String>(5)?.unwrap_or_default(),
            ));
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .map_err(|e| LakeError::Internal(format!("cannot read the target's indexes: {e}")))?;
    let shadow_name = Spi::get_one_with_args::<String>(
        "SELECT pg_catalog.quote_ident(n.nspname) OPERATOR(pg_catalog.||) '.' \
                OPERATOR(pg_catalog.||) pg_catalog.quote_ident(c.relname) \
         FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
         WHERE c.oid OPERATOR(pg_catalog.=) $1",
        &[shadow.into()],
    )
    .map_err(|e| LakeError::Internal(format!("cannot name the new heap: {e}")))?
    .unwrap_or_default();
    let mut pairs = Vec::new();
    for (index, def, index_name, table, raw_name) in defs {
        let copy_name = format!("pg_temp_{}", u32::from(index));
        let sql = shadow_index_sql(&def, &index_name, &table, &copy_name, &shadow_name)
            .ok_or_else(|| LakeError::Internal(format!("cannot copy index definition: {def}")))?;
        let built = crate::subxact::run(true, || {
            Spi::run(&sql).map_err(|e| LakeError::Internal(format!("{sql}: {e}")))
        });
        match built {
            Ok(r) => r?,
            // A repeat in a unique index of the user's: named as a row-by-row load names it.
            Err(e) if crate::subxact::sqlstate(&e) == PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION => {
                let detail = match &e {
                    CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) => {
                        r.detail().unwrap_or("").to_string()
                    }
                    CaughtError::RustPanic { ereport, .. } => {
                        ereport.detail().unwrap_or("").to_string()
                    }
                };
                ErrorReport::new(
                    PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION,
                    format!("duplicate key value violates unique constraint \"{raw_name}\""),
                    "pg_lakesync",
                )
                .set_detail(detail)
                .report(PgLogLevel::ERROR);
            }
            Err(e) => e.rethrow(),
        }
        let copy = Spi::get_one_with_args::<pg_sys::Oid>(
            "SELECT i.indexrelid FROM pg_catalog.pg_index i \
             JOIN pg_catalog.pg_class ic ON ic.oid OPERATOR(pg_catalog.=) i.indexrelid \
             WHERE i.indrelid OPERATOR(pg_catalog.=) $1 AND ic.relname OPERATOR(pg_catalog.=) $2",
            &[shadow.into(), copy_name.as_str().into()],
        )
        .map_err(|e| LakeError::Internal(format!("cannot find the copied index: {e}")))?
        .ok_or_else(|| LakeError::Internal("the copied index is not visible".into()))?;
        pairs.push((index, copy));
    }
    Ok(pairs)
}

/// `def` (as pg_get_indexdef prints it: `CREATE [UNIQUE] INDEX <name> ON <table> USING …`)
/// rewritten to build the same index, named `copy_name`, on `shadow`.
pub fn shadow_index_sql(
    def: &str,
    index_name: &str,
    table: &str,
    copy_name: &str,
    shadow: &str,
) -> Option<String> {
    let copy_name = pgrx::spi::quote_identifier(copy_name);
    ["CREATE UNIQUE INDEX ", "CREATE INDEX "]
        .iter()
        .find_map(|create| {
            let rest = def
                .strip_prefix(create)?
                .strip_prefix(index_name)?
                .strip_prefix(" ON ")?
                .strip_prefix(table)?
                .strip_prefix(" USING ")?;
            Some(format!("{create}{copy_name} ON {shadow} USING {rest}"))
        })
}

/// Takes ACCESS EXCLUSIVE on the target for the swap without ever making readers wait long.
/// An ordinary lock request would queue, and every reader arriving after it would queue behind
/// it until the slowest reader holding the table finished: one long report would stall all
/// others. So the swap mostly only tries (readers arriving meanwhile go ahead of it), and now and
/// then queues for at most QUEUED_SLICE, which is the longest a reader waits behind it, so that a
/// steady stream of short readers cannot starve it (nor, as the attempts double, long ones). A
/// holder that waits, directly or through others, for this sync (a writer blocked by the sync's
/// EXCLUSIVE lock, say) would never finish: then it queues like any lock request and Postgres'
/// deadlock check ends one of the two (the sync, when the holder waits for the table itself:
/// Postgres sees that at once). A `lock_timeout` set by the user bounds the whole wait.
fn lock_politely(target: &TargetName, relid: pg_sys::Oid) -> Result<()> {
    let lockmode = pg_sys::AccessExclusiveLock as pg_sys::LOCKMODE;
    let started = Instant::now();
    let user_timeout = unsafe { pg_sys::LockTimeout };
    let deadline = (user_timeout > 0).then(|| Duration::from_millis(user_timeout as u64));
    let mut next_queue = POLITE_WAIT;
    let mut queued = QUEUED_SLICE;
    loop {
        if unsafe { pg_sys::ConditionalLockRelationOid(relid, lockmode) } {
            return Ok(());
        }
        let waited = started.elapsed();
        if deadline.is_some_and(|d| waited >= d) {
            return Err(LakeError::SwapLockTimeout {
                target: target.qualified(),
                waited_ms: waited.as_millis() as u64,
            });
        }
        if waited >= next_queue {
            if holders_wait_for_us(relid)? {
                pgrx::debug1!(
                    "pg_lakesync: a reader of {} waits for this sync: queueing for the lock",
                    target.qualified()
                );
                unsafe { pg_sys::LockRelationOid(relid, lockmode) };
                return Ok(());
            }
            // Never queued past the user's lock_timeout.
            let slice = deadline.map_or(queued, |d| queued.min(d - waited));
            if queue_briefly(relid, lockmode, slice)? {
                return Ok(());
            }
            // Holders that never all let go within one attempt (readers that overlap and each
            // take longer) would starve a fixed one: each attempt waits twice as long as the last.
            queued = queued.saturating_mul(2);
            next_queue = started.elapsed() + TRY_BETWEEN_QUEUES;
        }
        sleep_interruptibly(Duration::from_millis(2));
    }
}

/// Queues for the lock for at most `slice` (as `lock_timeout` set for just this request, in a
/// subtransaction so the timeout's error is caught); whether it was granted.
fn queue_briefly(relid: pg_sys::Oid, lockmode: pg_sys::LOCKMODE, slice: Duration) -> Result<bool> {
    let timeout = format!("{}ms", slice.as_millis().max(1));
    let attempt = crate::session::with_settings(&[("lock_timeout", &timeout)], || {
        Ok(crate::subxact::run(true, || {
            unsafe { pg_sys::LockRelationOid(relid, lockmode) };
            // A timeout that fired as the lock was granted is still pending: raised here, it is
            // caught below (and the lock let go) instead of failing the sync later.
            pgrx::check_for_interrupts!();
            Ok(())
        }))
    })?;
    match attempt {
        Ok(done) => done.map(|()| true),
        Err(e) if crate::subxact::sqlstate(&e) == PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE => {
            Ok(false)
        }
        Err(e) => e.rethrow(),
    }
}

/// Whether a session holding a lock on `relid` waits for this one, directly or through others.
fn holders_wait_for_us(relid: pg_sys::Oid) -> Result<bool> {
    Spi::get_one_with_args::<bool>(
        "WITH RECURSIVE waits(pid) AS ( \
             SELECT l.pid FROM pg_catalog.pg_locks l \
             WHERE l.locktype OPERATOR(pg_catalog.=) 'relation' AND l.granted \
               AND l.database OPERATOR(pg_catalog.=) (SELECT d.oid FROM pg_catalog.pg_database d \
                   WHERE d.datname OPERATOR(pg_catalog.=) pg_catalog.current_database()) \
               AND l.relation OPERATOR(pg_catalog.=) $1 \
               AND l.pid OPERATOR(pg_catalog.<>) pg_catalog.pg_backend_pid() \
             UNION \
             SELECT b FROM waits w, pg_catalog.unnest(pg_catalog.pg_blocking_pids(w.pid)) b) \
         SELECT EXISTS (SELECT FROM waits WHERE pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid())",
        &[relid.into()],
    )
    .map(|found| found.unwrap_or(false))
    .map_err(|e| LakeError::Internal(format!("cannot see who holds the table: {e}")))
}

/// Sleeps on the process latch (so pg_stat_activity shows an Extension wait, and a cancel or
/// terminate ends the sync at once).
pub(super) fn sleep_interruptibly(d: Duration) {
    unsafe {
        pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
            d.as_millis() as std::ffi::c_long,
            pg_sys::PG_WAIT_EXTENSION,
        );
        pg_sys::ResetLatch(pg_sys::MyLatch);
    }
    pgrx::check_for_interrupts!();
}

unsafe fn toast_of(relid: pg_sys::Oid) -> pg_sys::Oid {
    let tuple = pg_sys::SearchSysCache1(
        pg_sys::SysCacheIdentifier::RELOID as i32,
        pg_sys::Datum::from(relid),
    );
    if tuple.is_null() {
        return pg_sys::InvalidOid;
    }
    let toast = (*pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_class>(tuple)).reltoastrelid;
    pg_sys::ReleaseSysCache(tuple);
    toast
}

unsafe fn rename_toast(relid: pg_sys::Oid, toast: pg_sys::Oid) {
    let name = std::ffi::CString::new(format!("pg_toast_{}", u32::from(relid))).unwrap();
    pg_sys::RenameRelationInternal(toast, name.as_ptr(), true, false);
    // make_new_heap marked the TOAST table as a rewrite's (logical decoding skips those): it is
    // the table's own now (as cluster.c's finish_heap_swap resets it).
    pg_sys::CommandCounterIncrement();
    pg_sys::ResetRelRewrite(toast);
    let index = Spi::get_one_with_args::<pg_sys::Oid>(
        "SELECT indexrelid FROM pg_catalog.pg_index WHERE indrelid OPERATOR(pg_catalog.=) $1",
        &[toast.into()],
    )
    .ok()
    .flatten()
    .unwrap_or(pg_sys::InvalidOid);
    if index == pg_sys::InvalidOid {
        return;
    }
    let index_name =
        std::ffi::CString::new(format!("pg_toast_{}_index", u32::from(relid))).unwrap();
    pg_sys::RenameRelationInternal(index, index_name.as_ptr(), true, true);
    pg_sys::CommandCounterIncrement();
}

/// Swaps the files of two relations of one kind (cluster.c `swap_relation_files` for a
/// non-catalog relation, TOAST by links): relfilenode, tablespace, TOAST table, the frozen
/// horizons that must match the data, and the size statistics.
unsafe fn swap_files(r1: pg_sys::Oid, r2: pg_sys::Oid) {
    let pg_class = pg_sys::table_open(
        pg_sys::RelationRelationId,
        pg_sys::RowExclusiveLock as pg_sys::LOCKMODE,
    );
    let copy = |relid: pg_sys::Oid| {
        let t = pg_sys::SearchSysCacheCopy(
            pg_sys::SysCacheIdentifier::RELOID as i32,
            pg_sys::Datum::from(relid),
            pg_sys::Datum::from(0),
            pg_sys::Datum::from(0),
            pg_sys::Datum::from(0),
        );
        if t.is_null() {
            pgrx::error!(
                "pg_lakesync: cache lookup failed for relation {}",
                u32::from(relid)
            );
        }
        t
    };
    let (t1, t2) = (copy(r1), copy(r2));
    let f1 = &mut *pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_class>(t1);
    let f2 = &mut *pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_class>(t2);
    assert_eq!(
        f1.relkind, f2.relkind,
        "pg_lakesync swaps only relations of one kind"
    );
    std::mem::swap(&mut f1.relfilenode, &mut f2.relfilenode);
    std::mem::swap(&mut f1.reltablespace, &mut f2.reltablespace);
    std::mem::swap(&mut f1.reltoastrelid, &mut f2.reltoastrelid);
    if f1.relkind != pg_sys::RELKIND_INDEX as std::ffi::c_char {
        std::mem::swap(&mut f1.relfrozenxid, &mut f2.relfrozenxid);
        std::mem::swap(&mut f1.relminmxid, &mut f2.relminmxid);
    }
    std::mem::swap(&mut f1.relpages, &mut f2.relpages);
    std::mem::swap(&mut f1.reltuples, &mut f2.reltuples);
    std::mem::swap(&mut f1.relallvisible, &mut f2.relallvisible);
    pg_sys::CatalogTupleUpdate(pg_class, &mut (*t1).t_self, t1);
    pg_sys::CatalogTupleUpdate(pg_class, &mut (*t2).t_self, t2);
    // Each TOAST table's one dependency goes to its new owner, so that dropping the shadow
    // drops the old TOAST table, not the new.
    let (toast1, toast2) = (f1.reltoastrelid, f2.reltoastrelid);
    for toast in [toast1, toast2] {
        if toast != pg_sys::InvalidOid {
            pg_sys::deleteDependencyRecordsFor(pg_sys::RelationRelationId, toast, false);
        }
    }
    for (toast, owner) in [(toast1, r1), (toast2, r2)] {
        if toast != pg_sys::InvalidOid {
            let base = pg_sys::ObjectAddress {
                classId: pg_sys::RelationRelationId,
                objectId: owner,
                objectSubId: 0,
            };
            let dependent = pg_sys::ObjectAddress {
                classId: pg_sys::RelationRelationId,
                objectId: toast,
                objectSubId: 0,
            };
            pg_sys::recordDependencyOn(
                &dependent,
                &base,
                pg_sys::DependencyType::DEPENDENCY_INTERNAL,
            );
        }
    }
    pg_sys::heap_freetuple(t1);
    pg_sys::heap_freetuple(t2);
    pg_sys::table_close(pg_class, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
    // Each relcache entry links to its relation's old file: close both links before the
    // invalidations of the next command counter increment rebuild the entries (as cluster.c).
    pg_sys::RelationCloseSmgrByOid(r1);
    pg_sys::RelationCloseSmgrByOid(r2);
    pg_sys::CommandCounterIncrement();
}
