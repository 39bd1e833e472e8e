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
use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BackgroundWorkerStatus, DynamicBackgroundWorker,
    SignalWakeFlags,
};
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
    /// The spec's new state; None leaves the spec as it is (a lost race, only the run counts).
    state: Option<String>,
    #[serde(default)]
    credential: Option<String>,
}

/// Writes the failed run and the spec's failed state in a transaction of their own. Returns
/// false (after a WARNING) when they could not be written; the ERROR still reaches the caller.
/// Waits at most [`MAX_WAIT`] for the worker: the failed backend may hold locks the worker
/// needs (an ALTER EXTENSION earlier in its transaction, say), a wait no deadlock check sees.
pub fn record_failure(run: &RunRecord, state: Option<&str>) -> bool {
    if unsafe { pg_sys::RecoveryInProgress() } {
        // A hot standby writes nothing (and starts no such worker): nothing to record.
        return false;
    }
    let msg = FailureMessage {
        target: run.target.clone(),
        owner: run.owner.clone(),
        started_pg_micros: timestamp_to_pg_micros(run.started),
        from_version: run.from_version,
        change_source: run.change_source.clone(),
        // Masked here: the recorder never used the credential, so it knows no secret to mask.
        message: crate::error::redact(run.message.as_deref().unwrap_or_default()),
        state: state.map(str::to_string),
        credential: run.credential.clone(),
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
            Ok(w) => match wait_bounded(&w) {
                Err(BackgroundWorkerStatus::NotYetStarted | BackgroundWorkerStatus::Started) => {
                    w.terminate();
                    Some("the recording worker did not finish in time (lock_timeout); see the server log")
                }
                Err(_) => Some("the recording worker did not run"),
                Ok(()) if addr.add(4).read_volatile() != 1 => {
                    Some("the recording worker failed; see the server log")
                }
                Ok(()) => None,
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

/// How long a failed backend waits for its failure to be recorded.
const MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(15);
/// What the recorder sets as its lock_timeout: less than [`MAX_WAIT`], so that a record that
/// waits for a lock the failed backend holds fails (and says so) before the backend gives up.
const RECORDER_LOCK_TIMEOUT: &str = "5s";

/// Waits until the worker has stopped, answering cancel; Err(status) when it is still not done
/// after [`MAX_WAIT`], or when it could not run.
fn wait_bounded(w: &DynamicBackgroundWorker) -> Result<(), BackgroundWorkerStatus> {
    let deadline = std::time::Instant::now() + MAX_WAIT;
    loop {
        match w.pid() {
            Err(BackgroundWorkerStatus::Stopped) => return Ok(()),
            Err(s @ BackgroundWorkerStatus::PostmasterDied) => return Err(s),
            status if std::time::Instant::now() >= deadline => {
                return Err(status.err().unwrap_or(BackgroundWorkerStatus::Started))
            }
            _ => {
                pgrx::check_for_interrupts!();
                unsafe { pg_sys::pg_usleep(5_000) };
            }
        }
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
            credential: msg.credential.clone(),
        };
        let written = Spi::run(&format!(
            "SET LOCAL lock_timeout = '{RECORDER_LOCK_TIMEOUT}'"
        ))
        .map_err(|e| crate::error::LakeError::Internal(e.to_string()))
        .and_then(|_| insert_run(&run))
        .and_then(|_| match &msg.state {
            Some(state) => mark_failed(&msg.target, &msg.owner, started, &msg.message, state),
            None => Ok(()),
        });
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
