//! Bulk load through Postgres' own COPY machinery: `BeginCopyFrom` with a data-source callback
//! that feeds the binary rows the scan thread produces. COPY does the multi-inserts, index
//! maintenance, constraint checks and WAL exactly as `COPY ... FROM` would.

use crate::error::{LakeError, Result};
use crate::source::scan::{Chunk, Next, ScanStream};
use crate::types::encode::EncodeStats;
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::{PgRelation, PgSqlErrorCode};
use std::cell::RefCell;
use std::ffi::CString;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// How long the callback waits for the scan thread before it looks for a cancel again.
const POLL: Duration = Duration::from_millis(50);

/// The stream COPY reads from; the callback has no user-data argument, so it lives here for
/// the duration of one `copy_from_stream` call. A stack: a trigger on the target may itself
/// run a sync, whose COPY then feeds from the top while the outer one waits.
struct Feed {
    stream: ScanStream,
    pending: Vec<u8>,
    pos: usize,
    chunks: u64,
    stats: Option<EncodeStats>,
}

thread_local! {
    static FEED: RefCell<Vec<Feed>> = const { RefCell::new(Vec::new()) };
}

/// Clears the feed however the COPY ends (success, ERROR, cancel), which drops the stream and
/// so stops the scan thread, and returns the scan's freed buffers to the OS.
struct FeedGuard;
impl Drop for FeedGuard {
    fn drop(&mut self) {
        FEED.with(|f| f.borrow_mut().pop());
        crate::source::release_scan_memory();
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn copy_data_source(
    outbuf: *mut std::ffi::c_void,
    minread: i32,
    maxread: i32,
) -> i32 {
    let out = outbuf as *mut u8;
    let (minread, maxread) = (minread.max(1) as usize, maxread as usize);
    let mut written = 0usize;
    loop {
        // Hand over what we hold.
        let step = FEED.with(|f| {
            let mut f = f.borrow_mut();
            let feed = f.last_mut().expect("pg_lakesync COPY feed is not set");
            let avail = feed.pending.len() - feed.pos;
            let n = avail.min(maxread - written);
            if n > 0 {
                std::ptr::copy_nonoverlapping(
                    feed.pending.as_ptr().add(feed.pos),
                    out.add(written),
                    n,
                );
                feed.pos += n;
            }
            n
        });
        written += step;
        if written >= minread {
            return written as i32;
        }
        // Need more: wait for the next chunk, staying responsive to cancel.
        let next = FEED.with(|f| f.borrow().last().map(|feed| feed.stream.next_timeout(POLL)));
        match next {
            None | Some(Next::Waiting) => {
                report_progress(0);
                pgrx::check_for_interrupts!();
            }
            Some(Next::Chunk(Chunk::Data(bytes, rows))) => {
                let first = FEED.with(|f| {
                    let mut f = f.borrow_mut();
                    let feed = f.last_mut().unwrap();
                    feed.pending = bytes;
                    feed.pos = 0;
                    feed.chunks += 1;
                    feed.chunks == 1
                });
                report_progress(rows as i64);
                if first {
                    crate::debug::pause_point("read");
                }
            }
            Some(Next::Chunk(Chunk::Done(stats))) => {
                report_progress(0);
                FEED.with(|f| f.borrow_mut().last_mut().unwrap().stats = Some(stats));
                return written as i32; // end of data
            }
            Some(Next::Chunk(Chunk::Failed(e))) => e.raise(),
        }
    }
}

/// Puts `rows` more written rows on the board, and the rows the scan expects once its count
/// (a thread of its own) is in: once per chunk, and while waiting for one (every 50 ms).
fn report_progress(rows: i64) {
    let expected = FEED.with(|f| {
        f.borrow()
            .last()
            .map_or(-1, |feed| feed.stream.expected.load(Ordering::Relaxed))
    });
    if rows > 0 || expected >= 0 {
        crate::record::board::progress(rows, expected);
    }
}

/// The checks `COPY … FROM` makes before it writes (DoCopy): INSERT privilege on the table or
/// on every column written, and no row-level security for this role, which COPY FROM does not
/// apply (so a policy's WITH CHECK could not hold). BeginCopyFrom itself checks neither.
unsafe fn check_as_copy_from(
    pstate: *mut pg_sys::ParseState,
    rte: *mut pg_sys::RangeTblEntry,
    rel: &PgRelation,
    columns: &[String],
) {
    (*rte).requiredPerms = pg_sys::ACL_INSERT as pg_sys::AclMode;
    for c in columns {
        let name = CString::new(c.as_str()).unwrap();
        let attnum = pg_sys::attnameAttNum(rel.as_ptr(), name.as_ptr(), false);
        (*rte).insertedCols = pg_sys::bms_add_member(
            (*rte).insertedCols,
            attnum as i32 - pg_sys::FirstLowInvalidHeapAttributeNumber,
        );
    }
    pg_sys::ExecCheckRTPerms((*pstate).p_rtable, true);
    refuse_row_security(rel.oid());
}

/// Refuses a target with row-level security for the syncing role: COPY FROM cannot apply
/// policies, and the SQL that deletes and upserts changes would apply them silently (skipping
/// rows a policy hides), leaving the table out of step with Delta. Checked for the target of
/// every sync, whichever way it writes.
pub fn refuse_row_security(relid: pg_sys::Oid) {
    if unsafe { pg_sys::check_enable_rls(relid, pg_sys::InvalidOid, false) }
        == pg_sys::CheckEnableRlsResult::RLS_ENABLED as i32
    {
        LakeError::Unsupported {
            message: format!(
                "table \"{}\" has row-level security enabled for role \"{}\", which pg_lakesync's bulk load (COPY FROM) cannot apply",
                relation_name(relid),
                crate::catalog::current_role_name()
            ),
            hint: Some(
                "Synced tables are written only by their syncs: leave row-level security off for the role that syncs (the table's owner is exempt unless FORCE ROW LEVEL SECURITY is set), or grant it BYPASSRLS."
                    .into(),
            ),
        }
        .raise();
    }
}

/// COPYs the rows of `stream` into `columns` of the relation `relid`; returns the rows COPY
/// stored and what the encoder counted.
pub fn copy_from_stream(
    relid: pg_sys::Oid,
    columns: &[String],
    stream: ScanStream,
) -> Result<(u64, EncodeStats)> {
    let table = relation_name(relid);
    copy_into_fresh(&table, columns, stream, || (relid, false)).map(|(_, n, stats)| (n, stats))
}

/// Whether a COPY run now may write frozen rows, as `COPY … (FREEZE)` demands (copyfrom.c): no
/// snapshot of this transaction older than the COPY's own, no open cursor. Checked before a sync
/// commits to a path that needs frozen rows; COPY checks it again.
pub fn freeze_allowed() -> bool {
    unsafe {
        pg_sys::InvalidateCatalogSnapshot();
        pg_sys::ThereAreNoPriorRegisteredSnapshots()
            && pg_sys::submodules::ffi::pg_guard_ffi_boundary(|| ThereAreNoReadyPortals())
    }
}

unsafe extern "C-unwind" {
    // utils/portal.h, which pgrx does not bind.
    fn ThereAreNoReadyPortals() -> bool;
}

/// COPYs the rows of `stream` into a relation that `fresh` makes (or gives a new file) in the
/// COPY's own subtransaction, so that COPY may write them frozen and all-visible, as `COPY …
/// (FREEZE)` does into a table new in its subtransaction: no anti-wraparound VACUUM rewrites
/// those pages later. `fresh` says whether to freeze (see `freeze_allowed`). `table` names
/// the target in messages. Returns the relation, the rows stored and the encoder's counts.
pub fn copy_into_fresh(
    table: &str,
    columns: &[String],
    stream: ScanStream,
    fresh: impl FnOnce() -> (pg_sys::Oid, bool),
) -> Result<(pg_sys::Oid, u64, EncodeStats)> {
    let table = table.to_string();
    FEED.with(|f| {
        f.borrow_mut().push(Feed {
            stream,
            pending: Vec::new(),
            pos: 0,
            chunks: 0,
            stats: None,
        });
    });
    let _guard = FeedGuard;
    // In a subtransaction, so that a caught ERROR is rolled back before anything else runs.
    // (The table is named before: after a caught ERROR, nothing may touch the catalogs.)
    let copied = crate::session::with_utf8_client_encoding(|| {
        Ok(crate::subxact::run(true, || {
            let (relid, freeze) = fresh();
            Ok((relid, unsafe { begin_and_copy(relid, columns, freeze) }))
        }))
    })?;
    let (relid, processed) = match copied {
        Ok(n) => n?,
        // Ours, raised by the feed (a value the encoder refused): as it was.
        Err(e) if ours(&e).is_some() => return Err(ours(&e).unwrap()),
        Err(e)
            if crate::subxact::sqlstate(&e) == PgSqlErrorCode::ERRCODE_UNTRANSLATABLE_CHARACTER =>
        {
            return Err(LakeError::Untranslatable {
                table,
                detail: crate::subxact::message(&e),
            })
        }
        Err(e) => e.rethrow(),
    };
    let stats = FEED
        .with(|f| f.borrow_mut().last_mut().and_then(|feed| feed.stats.take()))
        .ok_or_else(|| LakeError::Internal("COPY finished before the scan did".into()))?;
    Ok((relid, processed, stats))
}

fn ours(e: &pgrx::pg_sys::panic::CaughtError) -> Option<LakeError> {
    crate::error::raised(crate::subxact::sqlstate(e), &crate::subxact::message(e))
}

fn relation_name(relid: pg_sys::Oid) -> String {
    unsafe {
        let rel = PgRelation::open(relid);
        format!(
            "{}.{}",
            crate::plan::target::quote_ident(rel.namespace()),
            crate::plan::target::quote_ident(rel.name())
        )
    }
}

/// One `COPY … FROM` of the current feed, with COPY's own checks.
unsafe fn begin_and_copy(relid: pg_sys::Oid, columns: &[String], freeze: bool) -> u64 {
    {
        let rel = PgRelation::with_lock(relid, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
        let pstate = pg_sys::make_parsestate(std::ptr::null_mut());
        // COPY's executor state takes its range table from the parse state.
        let item = pg_sys::addRangeTableEntryForRelation(
            pstate,
            rel.as_ptr(),
            pg_sys::RowExclusiveLock as i32,
            std::ptr::null_mut(),
            false,
            false,
        );
        check_as_copy_from(pstate, (*item).p_rte, &rel, columns);
        // The option list lives in Postgres memory, freed with the query's context.
        let format = pg_sys::makeDefElem(
            pg_sys::pstrdup(c"format".as_ptr()),
            pg_sys::makeString(pg_sys::pstrdup(c"binary".as_ptr())) as *mut pg_sys::Node,
            -1,
        );
        let mut options = pg_sys::lappend(std::ptr::null_mut(), format as *mut std::ffi::c_void);
        if freeze {
            let freeze = pg_sys::makeDefElem(
                pg_sys::pstrdup(c"freeze".as_ptr()),
                pg_sys::makeString(pg_sys::pstrdup(c"true".as_ptr())) as *mut pg_sys::Node,
                -1,
            );
            options = pg_sys::lappend(options, freeze as *mut std::ffi::c_void);
        }
        let mut attnames: *mut pg_sys::List = std::ptr::null_mut();
        for c in columns {
            let name = pg_sys::makeString(pgrx::pg_sys::pstrdup(
                CString::new(c.as_str()).unwrap().as_ptr(),
            ));
            attnames = pg_sys::lappend(attnames, name as *mut std::ffi::c_void);
        }
        let cstate = pg_sys::BeginCopyFrom(
            pstate,
            rel.as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null(),
            false,
            Some(copy_data_source),
            attnames,
            options,
        );
        let n = pg_sys::CopyFrom(cstate);
        pg_sys::EndCopyFrom(cstate);
        pg_sys::free_parsestate(pstate);
        n
    }
}
