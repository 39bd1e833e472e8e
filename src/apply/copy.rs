//! Bulk load through Postgres' own COPY machinery: `BeginCopyFrom` with a data-source callback
//! that feeds the binary rows the scan thread produces. COPY does the multi-inserts, index
//! maintenance, constraint checks and WAL exactly as `COPY ... FROM` would.

use crate::error::{LakeError, Result};
use crate::source::scan::{Chunk, Next, ScanStream};
use crate::types::encode::EncodeStats;
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgRelation;
use std::cell::RefCell;
use std::ffi::CString;
use std::time::Duration;

/// How long the callback waits for the scan thread before it looks for a cancel again.
const POLL: Duration = Duration::from_millis(50);

/// The stream COPY reads from; the callback has no user-data argument, so it lives here for
/// the duration of one `copy_from_stream` call (COPYs do not nest within one backend here).
struct Feed {
    stream: ScanStream,
    pending: Vec<u8>,
    pos: usize,
    chunks: u64,
    stats: Option<EncodeStats>,
}

thread_local! {
    static FEED: RefCell<Option<Feed>> = const { RefCell::new(None) };
}

/// Clears the feed however the COPY ends (success, ERROR, cancel), which drops the stream and
/// so stops the scan thread, and returns the scan's freed buffers to the OS.
struct FeedGuard;
impl Drop for FeedGuard {
    fn drop(&mut self) {
        FEED.with(|f| f.borrow_mut().take());
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
            let feed = f.as_mut().expect("pg_lakesync COPY feed is not set");
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
        let next = FEED.with(|f| {
            f.borrow()
                .as_ref()
                .map(|feed| feed.stream.next_timeout(POLL))
        });
        match next {
            None | Some(Next::Waiting) => {
                pgrx::check_for_interrupts!();
            }
            Some(Next::Chunk(Chunk::Data(bytes))) => {
                let first = FEED.with(|f| {
                    let mut f = f.borrow_mut();
                    let feed = f.as_mut().unwrap();
                    feed.pending = bytes;
                    feed.pos = 0;
                    feed.chunks += 1;
                    feed.chunks == 1
                });
                if first {
                    crate::debug::pause_point("read");
                }
            }
            Some(Next::Chunk(Chunk::Done(stats))) => {
                FEED.with(|f| f.borrow_mut().as_mut().unwrap().stats = Some(stats));
                return written as i32; // end of data
            }
            Some(Next::Chunk(Chunk::Failed(e))) => e.raise(),
        }
    }
}

/// COPYs the rows of `stream` into `columns` of the relation `relid`; returns the rows COPY
/// stored and what the encoder counted.
pub fn copy_from_stream(
    relid: pg_sys::Oid,
    columns: &[String],
    stream: ScanStream,
) -> Result<(u64, EncodeStats)> {
    FEED.with(|f| {
        *f.borrow_mut() = Some(Feed {
            stream,
            pending: Vec::new(),
            pos: 0,
            chunks: 0,
            stats: None,
        });
    });
    let _guard = FeedGuard;
    let processed = unsafe {
        let rel = PgRelation::with_lock(relid, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
        let pstate = pg_sys::make_parsestate(std::ptr::null_mut());
        // COPY's executor state takes its range table from the parse state.
        pg_sys::addRangeTableEntryForRelation(
            pstate,
            rel.as_ptr(),
            pg_sys::RowExclusiveLock as i32,
            std::ptr::null_mut(),
            false,
            false,
        );
        let format = pg_sys::makeDefElem(
            CString::new("format").unwrap().into_raw(),
            pg_sys::makeString(CString::new("binary").unwrap().into_raw()) as *mut pg_sys::Node,
            -1,
        );
        let options = pg_sys::lappend(std::ptr::null_mut(), format as *mut std::ffi::c_void);
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
    };
    let stats = FEED
        .with(|f| f.borrow_mut().as_mut().and_then(|feed| feed.stats.take()))
        .ok_or_else(|| LakeError::Internal("COPY finished before the scan did".into()))?;
    Ok((processed, stats))
}
