//! Failure records that outlive the failed transaction.
//!
//! A failed sync raises an ERROR, which rolls back everything its transaction wrote — including
//! a row saying that it failed. So the failure is written by a short-lived background worker in
//! a transaction of its own, in the same database; the ERROR then proceeds. The record travels
//! to the worker through a dynamic shared memory segment, and the worker marks the segment when
//! the record is committed, so a lost record is never silent.
//!
//! The worker connects as the bootstrap superuser, not as the failed role: on PG 15 a worker's
//! connection runs the can-login check, which a NOLOGIN role (SET ROLE, a group role) fails. It
//! writes only what the failed backend handed it, with that role as the run's owner.

use super::{insert_run, mark_failed, RunRecord};
use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, SignalWakeFlags};
use pgrx::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct FailureMessage {
    target: String,
    owner: String,
    /// Microseconds since 2000-01-01, Postgres' timestamptz.
    started_pg_micros: i64,
    from_version: Option<i64>,
    change_source: Option<String>,
    message: String,
    state: String,
}

/// Writes the failed run and the spec's failed state in a transaction of their own. Returns
/// false (after a WARNING) when they could not be written; the ERROR still reaches the caller.
pub fn record_failure(run: &RunRecord, state: &str) -> bool {
    let msg = FailureMessage {
        target: run.target.clone(),
        owner: run.owner.clone(),
        started_pg_micros: timestamp_to_pg_micros(run.started),
        from_version: run.from_version,
        change_source: run.change_source.clone(),
        message: run.message.clone().unwrap_or_default(),
        state: state.to_string(),
    };
    let payload = serde_json::to_vec(&msg).expect("serializable");
    unsafe {
        // Layout: payload length (4 bytes), committed flag (1 byte), payload.
        let seg = pg_sys::dsm_create(payload.len() + HEADER, 0);
        let addr = pg_sys::dsm_segment_address(seg) as *mut u8;
        std::ptr::copy_nonoverlapping((payload.len() as u32).to_ne_bytes().as_ptr(), addr, 4);
        addr.add(4).write_volatile(0);
        std::ptr::copy_nonoverlapping(payload.as_ptr(), addr.add(HEADER), payload.len());
        let handle = pg_sys::dsm_segment_handle(seg);
        let extra = format!("{}", u32::from(pg_sys::MyDatabaseId));
        let worker = BackgroundWorkerBuilder::new("pg_lakesync failure recorder")
            .set_type("pg_lakesync")
            .set_library("pg_lakesync")
            .set_function("lakesync_failure_recorder_main")
            .enable_spi_access()
            .set_start_time(pgrx::bgworkers::BgWorkerStartTime::RecoveryFinished)
            .set_restart_time(None)
            .set_argument(Some(pg_sys::Datum::from(handle)))
            .set_extra(&extra)
            .set_notify_pid(pg_sys::MyProcPid)
            .load_dynamic();
        let why = match worker {
            Err(_) => Some("no background worker slot is free (max_worker_processes)"),
            Ok(w) => match w.wait_for_shutdown() {
                Err(_) => Some("the recording worker did not run"),
                Ok(_) if addr.add(4).read_volatile() != 1 => {
                    Some("the recording worker failed; see the server log")
                }
                Ok(_) => None,
            },
        };
        pg_sys::dsm_detach(seg);
        if let Some(why) = why {
            pgrx::warning!(
                "pg_lakesync could not record the failed sync of \"{}\" in lakesync.sync_runs: {why}",
                run.target
            );
        }
        why.is_none()
    }
}

fn timestamp_to_pg_micros(t: pgrx::datum::TimestampWithTimeZone) -> i64 {
    let d: pg_sys::Datum = t.into_datum().expect("timestamp datum");
    d.value() as i64
}

/// Entry point of the recorder worker.
#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn lakesync_failure_recorder_main(arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGTERM);
    let db = BackgroundWorker::get_extra()
        .trim()
        .parse::<u32>()
        .unwrap_or(0);
    BackgroundWorker::connect_worker_to_spi_by_oid(
        Some(pg_sys::Oid::from(db)),
        Some(pg_sys::Oid::from(pg_sys::BOOTSTRAP_SUPERUSERID)),
    );
    let seg = unsafe { pg_sys::dsm_attach(arg.value() as pg_sys::dsm_handle) };
    if seg.is_null() {
        return; // the failed backend gave up waiting
    }
    let addr = unsafe { pg_sys::dsm_segment_address(seg) as *mut u8 };
    let msg: Option<FailureMessage> = unsafe {
        let mut len = [0u8; 4];
        std::ptr::copy_nonoverlapping(addr, len.as_mut_ptr(), 4);
        let bytes = std::slice::from_raw_parts(addr.add(HEADER), u32::from_ne_bytes(len) as usize);
        serde_json::from_slice(bytes).ok()
    };
    let Some(msg) = msg else {
        pgrx::log!("pg_lakesync failure recorder: unreadable failure message");
        return;
    };
    BackgroundWorker::transaction(move || {
        let started = unsafe {
            pgrx::datum::TimestampWithTimeZone::from_datum(
                pg_sys::Datum::from(msg.started_pg_micros),
                false,
            )
            .expect("timestamp")
        };
        let run = RunRecord {
            target: msg.target.clone(),
            owner: msg.owner.clone(),
            started,
            from_version: msg.from_version,
            to_version: None,
            inserted: 0,
            updated: 0,
            deleted: 0,
            skipped: 0,
            change_source: msg.change_source.clone(),
            succeeded: false,
            message: Some(msg.message.clone()),
        };
        let written = insert_run(&run)
            .and_then(|_| mark_failed(&msg.target, &msg.owner, started, &msg.message, &msg.state));
        // Both or neither: an ERROR aborts the transaction (and ends this worker unmarked).
        if let Err(e) = written {
            e.raise();
        }
    });
    // The transaction has committed: tell the waiting backend.
    unsafe { addr.add(4).write_volatile(1) };
    unsafe { pg_sys::dsm_detach(seg) };
}

const HEADER: usize = 5;
