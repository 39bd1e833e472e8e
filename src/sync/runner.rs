//! Runners: in whose transaction a sync runs and how its failure is recorded. A failed sync's
//! ERROR rolls back everything it wrote, so the failure is recorded outside of it.
//!
//! `Interactive` is a SQL call (`sync_now`, `full_refresh`): the caller's transaction, the sync
//! in a subtransaction, the failure recorded by a worker of its own after the subtransaction
//! (and the spec's row lock with it) is rolled back. The background worker's runner (its own
//! transaction per sync, as the owner) plugs in here next.

use super::report::SyncReport;
use crate::catalog::{Caller, State};
use crate::error::Result;
use crate::record::{self, RunRecord};
use pgrx::datum::TimestampWithTimeZone;

pub trait Runner {
    /// Runs `sync` for `target` (qualified), recording a failure.
    fn run(&self, target: &str, sync: impl FnOnce() -> Result<SyncReport>) -> Result<SyncReport>;
}

pub struct Interactive<'a> {
    /// Keep what the sync did (false: a dry run, rolled back and not recorded).
    pub keep: bool,
    pub caller: &'a Caller,
    pub started: TimestampWithTimeZone,
}

impl Runner for Interactive<'_> {
    fn run(&self, target: &str, sync: impl FnOnce() -> Result<SyncReport>) -> Result<SyncReport> {
        match crate::subxact::run(self.keep, sync) {
            Ok(Ok(report)) => Ok(report),
            Ok(Err(e)) => {
                if self.keep {
                    self.record_failure(target, &e.to_string(), e.needs_full_refresh());
                }
                Err(e)
            }
            Err(caught) => {
                if self.keep {
                    self.record_failure(
                        target,
                        &crate::subxact::message(&caught),
                        crate::subxact::needs_full_refresh(&caught),
                    );
                }
                caught.rethrow()
            }
        }
    }
}

impl Interactive<'_> {
    fn record_failure(&self, target: &str, message: &str, needs_full_refresh: bool) {
        let state = if needs_full_refresh {
            State::NeedsFullRefresh
        } else {
            State::Failed
        };
        record::autonomous::record_failure(
            &RunRecord {
                target: target.to_string(),
                owner: self.caller.name.clone(),
                started: self.started,
                from_version: None,
                to_version: None,
                inserted: 0,
                updated: 0,
                deleted: 0,
                skipped: 0,
                change_source: None,
                succeeded: false,
                message: Some(message.to_string()),
            },
            state.as_str(),
        );
    }
}
