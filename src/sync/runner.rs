//! Runners: in whose transaction a sync runs and how its failure is recorded. A failed sync's
//! ERROR rolls back everything it wrote, so the failure is recorded outside of it.
//!
//! Both run the sync in a subtransaction. `Interactive` is a SQL call (`sync_now`,
//! `full_refresh`): the caller's transaction, the failure recorded by a worker of its own after
//! the subtransaction (and the spec's row lock with it) is rolled back, then the ERROR goes on to
//! the caller. `Background` is the background worker's: a transaction of its own per sync, in
//! which the failure is recorded after the subtransaction's rollback and committed — the worker
//! logs the error instead of raising it.

use super::report::SyncReport;
use crate::catalog::{Caller, State};
use crate::error::{LakeError, Result};
use crate::record::{self, RunRecord};
use pgrx::datum::TimestampWithTimeZone;
use std::cell::RefCell;

/// Whose sync it is and when it started: what a failure record needs.
pub struct RunFor<'a> {
    pub caller: &'a Caller,
    pub started: TimestampWithTimeZone,
    /// The owner of the spec the sync locked, once it has: a failure is recorded as theirs (also
    /// when a superuser synced it). A failure before that is recorded as the caller's run only.
    pub locked_owner: RefCell<Option<String>>,
}

impl<'a> RunFor<'a> {
    pub fn new(caller: &'a Caller, started: TimestampWithTimeZone) -> Self {
        RunFor {
            caller,
            started,
            locked_owner: RefCell::new(None),
        }
    }

    /// The failed run to record, and the spec's new state (None: leave it).
    fn failure(&self, target: &str, message: &str, outcome: Outcome) -> (RunRecord, Option<State>) {
        let locked = self.locked_owner.borrow().clone();
        let (owner, outcome) = match locked {
            Some(owner) => (owner, outcome),
            None => (self.caller.name.clone(), Outcome::LeaveState),
        };
        let run = RunRecord::failed(target, &owner, self.started, message);
        (run, outcome.state())
    }
}

pub trait Runner {
    fn run_for(&self) -> &RunFor<'_>;

    /// Runs `sync` for `target` (qualified), recording a failure.
    fn run(&self, target: &str, sync: impl FnOnce() -> Result<SyncReport>) -> Result<SyncReport>;
}

pub struct Interactive<'a> {
    /// Keep what the sync did (false: a dry run, rolled back and not recorded).
    pub keep: bool,
    pub run_for: RunFor<'a>,
}

impl Runner for Interactive<'_> {
    fn run_for(&self) -> &RunFor<'_> {
        &self.run_for
    }

    fn run(&self, target: &str, sync: impl FnOnce() -> Result<SyncReport>) -> Result<SyncReport> {
        let record = |message: &str, outcome| {
            if self.keep {
                let (run, state) = self.run_for.failure(target, message, outcome);
                record::autonomous::record_failure(&run, state.map(State::as_str));
            }
        };
        match crate::subxact::run(self.keep, sync) {
            Ok(Ok(report)) => Ok(report),
            Ok(Err(e)) => {
                record(&e.to_string(), Outcome::of_error(&e));
                Err(e)
            }
            Err(caught) => {
                record(
                    &crate::subxact::message(&caught),
                    Outcome::of_caught(&caught),
                );
                caught.rethrow()
            }
        }
    }
}

pub struct Background<'a> {
    pub run_for: RunFor<'a>,
}

impl Runner for Background<'_> {
    fn run_for(&self) -> &RunFor<'_> {
        &self.run_for
    }

    fn run(&self, target: &str, sync: impl FnOnce() -> Result<SyncReport>) -> Result<SyncReport> {
        let (message, outcome) = match crate::subxact::run(true, sync) {
            Ok(Ok(report)) => return Ok(report),
            Ok(Err(e)) => (e.to_string(), Outcome::of_error(&e)),
            Err(caught) => (
                crate::subxact::message(&caught),
                Outcome::of_caught(&caught),
            ),
        };
        let (run, state) = self.run_for.failure(target, &message, outcome);
        record::insert_run(&run)?;
        if let Some(state) = state {
            record::mark_failed(target, &run.owner, run.started, &message, state.as_str())?;
        }
        Err(LakeError::Internal(message))
    }
}

/// What a failure means for the spec's state.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Failed,
    NeedsFullRefresh,
    /// Only the run is recorded, the spec left as it is: a serialization failure or deadlock
    /// (the sync lost a race and changed nothing; the table is as synced as it was), or a
    /// failure before the sync had locked its spec.
    LeaveState,
}

impl Outcome {
    pub fn of_error(e: &LakeError) -> Self {
        if e.needs_full_refresh() {
            Outcome::NeedsFullRefresh
        } else {
            Outcome::Failed
        }
    }

    pub fn of_caught(e: &pgrx::pg_sys::panic::CaughtError) -> Self {
        use pgrx::PgSqlErrorCode::*;
        match crate::subxact::sqlstate(e) {
            ERRCODE_T_R_SERIALIZATION_FAILURE | ERRCODE_T_R_DEADLOCK_DETECTED => {
                Outcome::LeaveState
            }
            _ if crate::subxact::needs_full_refresh(e) => Outcome::NeedsFullRefresh,
            _ => Outcome::Failed,
        }
    }

    /// The spec's new state, or None to leave it.
    pub fn state(self) -> Option<State> {
        match self {
            Outcome::Failed => Some(State::Failed),
            Outcome::NeedsFullRefresh => Some(State::NeedsFullRefresh),
            Outcome::LeaveState => None,
        }
    }
}
