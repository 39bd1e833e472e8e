//! Blocking work (reading the Delta log) runs on a thread of its own while the backend waits
//! and keeps answering cancel and terminate requests, so a slow store never pins a backend.

use crate::error::{LakeError, Result};
use std::sync::mpsc::{sync_channel, RecvTimeoutError};
use std::time::Duration;

pub fn run<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    let (tx, rx) = sync_channel(1);
    std::thread::Builder::new()
        .name("lakesync-open".into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(|e| LakeError::Internal(format!("cannot start a thread: {e}")))?;
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(v) => return v,
            Err(RecvTimeoutError::Timeout) => {
                pgrx::check_for_interrupts!();
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Err(LakeError::Internal(
                    "reading the Delta log failed unexpectedly (thread panicked)".into(),
                ))
            }
        }
    }
}
