//! Record: the history of every sync in `lakesync.sync_runs`, and the failure state of a spec.

pub mod autonomous;
pub mod board;

use crate::error::{LakeError, Result};
use pgrx::datum::{DatumWithOid, TimestampWithTimeZone};
use pgrx::prelude::*;

#[derive(Debug, Clone)]
pub struct RunRecord {
    pub target: String,
    /// The role the run belongs to (row security shows it its runs).
    pub owner: String,
    pub started: TimestampWithTimeZone,
    pub from_version: Option<i64>,
    pub to_version: Option<i64>,
    pub inserted: i64,
    pub updated: i64,
    pub deleted: i64,
    pub skipped: i64,
    pub change_source: Option<String>,
    pub succeeded: bool,
    pub message: Option<String>,
    /// The credential the run read its source with.
    pub credential: Option<String>,
}

impl RunRecord {
    /// A failed run that read and wrote nothing.
    pub fn failed(
        target: &str,
        owner: &str,
        started: TimestampWithTimeZone,
        message: &str,
    ) -> Self {
        RunRecord {
            target: target.to_string(),
            owner: owner.to_string(),
            started,
            from_version: None,
            to_version: None,
            inserted: 0,
            updated: 0,
            deleted: 0,
            skipped: 0,
            change_source: None,
            succeeded: false,
            message: Some(message.to_string()),
            credential: credential_in_use(),
        }
    }
}

thread_local! {
    /// The credential the current sync reads with (set when it is resolved), for its run's row.
    static CREDENTIAL: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Notes the credential the current sync uses (None: none, at the start of each sync).
pub fn set_credential_in_use(name: Option<String>) {
    CREDENTIAL.replace(name);
}

pub fn credential_in_use() -> Option<String> {
    CREDENTIAL.with_borrow(|c| c.clone())
}

thread_local! {
    /// The 'running' row the background worker committed for the sync it is about to run, and
    /// that sync's target: the run's record fills it in (in the sync's transaction) instead of
    /// inserting a new one. Kept until the worker's transaction ends: a record rolled back with
    /// a subtransaction (a failure after the success was recorded) leaves the row 'running'
    /// again, for the failure's record; a second record in the transaction (a sync nested in a
    /// trigger) inserts its own.
    static CLAIMED: std::cell::RefCell<Option<(i64, String)>> =
        const { std::cell::RefCell::new(None) };
}

/// Commits nothing itself: inserts a 'running' run of `target` for this backend, in the current
/// transaction (which the worker commits before it syncs), and claims it for the next record.
/// A run left 'running' by a worker that is gone is marked failed by [`sweep_unfinished`].
pub fn claim_running_run(target: &str, owner: &str) -> Result<()> {
    let id = crate::catalog::as_catalog_owner(|| {
        Spi::get_one_with_args::<i64>(
            "INSERT INTO lakesync.sync_runs (target, owner, started_at, finished_at, status, pid) \
             VALUES ($1, $2, pg_catalog.clock_timestamp(), NULL, 'running', \
                     pg_catalog.pg_backend_pid()) \
             RETURNING run_id",
            &[target.into(), owner.into()],
        )
        .map_err(|e| LakeError::Internal(format!("cannot record the sync run: {e}")))
    })?;
    CLAIMED.replace(id.map(|id| (id, target.to_string())));
    Ok(())
}

/// Removes the claimed 'running' row if no run was recorded in it (a sync that found nothing to
/// do records none), in the sync's transaction.
pub fn release_claimed_run() -> Result<()> {
    let Some((id, _)) = CLAIMED.take() else {
        return Ok(());
    };
    crate::catalog::as_catalog_owner(|| {
        Spi::run_with_args(
            "DELETE FROM lakesync.sync_runs WHERE run_id OPERATOR(pg_catalog.=) $1 \
             AND status OPERATOR(pg_catalog.=) 'running'",
            &[id.into()],
        )
        .map_err(|e| LakeError::Internal(format!("cannot record the sync run: {e}")))
    })
}

/// Marks failed the runs left 'running' by background workers that are gone (killed, a crash,
/// a restart): their transaction never committed, so nothing they wrote was kept. Returns how
/// many. Only runs claimed before this transaction began: pg_stat_activity is read once per
/// transaction, and a worker claims its run after it has connected, so a run claimed later
/// may belong to a worker this transaction's view of pg_stat_activity does not show.
pub fn sweep_unfinished() -> Result<u64> {
    const UNFINISHED: &str = "r.status OPERATOR(pg_catalog.=) 'running' \
        AND r.started_at OPERATOR(pg_catalog.<) pg_catalog.now() \
        AND NOT EXISTS (SELECT FROM pg_catalog.pg_stat_activity a \
                         WHERE a.pid OPERATOR(pg_catalog.=) r.pid \
                           AND a.backend_start OPERATOR(pg_catalog.<=) r.started_at)";
    let fail =
        |e: pgrx::spi::Error| LakeError::Internal(format!("cannot mark unfinished runs: {e}"));
    // Read first: an UPDATE through pgrx takes a transaction ID even when it changes nothing.
    let any = crate::catalog::read_one::<bool>(
        &format!("SELECT EXISTS (SELECT FROM lakesync.sync_runs r WHERE {UNFINISHED})"),
        &[],
    )
    .map_err(fail)?;
    if any != Some(true) {
        return Ok(0);
    }
    Spi::connect_mut(|c| {
        c.update(
            &format!(
                "UPDATE lakesync.sync_runs r SET status = 'failed', \
                        finished_at = pg_catalog.clock_timestamp(), \
                        message = pg_catalog.format('the sync did not finish: its background \
                            worker (pid %s) stopped first (killed, a crash, or a server restart \
                            or shutdown); nothing it wrote was kept', r.pid) \
                  WHERE {UNFINISHED}"
            ),
            None,
            &[],
        )
        .map(|t| t.len() as u64)
    })
    .map_err(fail)
}

/// Inserts the run in the current transaction (or fills in the claimed 'running' one); returns
/// its run_id.
pub fn insert_run(r: &RunRecord) -> Result<i64> {
    let args = || -> Vec<DatumWithOid> {
        vec![
            r.target.clone().into(),
            r.started.into(),
            r.from_version.into(),
            r.to_version.into(),
            r.inserted.into(),
            r.updated.into(),
            r.deleted.into(),
            r.skipped.into(),
            r.change_source.clone().into(),
            (if r.succeeded { "succeeded" } else { "failed" }).into(),
            r.message
                .as_deref()
                .map(|m| crate::error::for_server(&crate::error::redact(m)))
                .into(),
            r.owner.clone().into(),
            r.credential.clone().into(),
        ]
    };
    let claimed = CLAIMED.with_borrow(|c| {
        c.as_ref()
            .filter(|(_, target)| *target == r.target)
            .map(|(id, _)| *id)
    });
    if let Some(id) = claimed {
        let mut args = args();
        args.push(id.into());
        let filled = crate::catalog::as_catalog_owner(|| {
            Spi::get_one_with_args::<i64>(
                "UPDATE lakesync.sync_runs SET target = $1, started_at = $2, from_version = $3, \
                 to_version = $4, rows_inserted = $5, rows_updated = $6, rows_deleted = $7, \
                 rows_skipped = $8, change_source = $9, status = $10, message = $11, owner = $12, \
                 credential = $13, finished_at = pg_catalog.clock_timestamp() \
                 WHERE run_id OPERATOR(pg_catalog.=) $14 \
                   AND status OPERATOR(pg_catalog.=) 'running' RETURNING run_id",
                &args,
            )
            .map_err(|e| LakeError::Internal(format!("cannot record the sync run: {e}")))
        })?;
        if let Some(id) = filled {
            return Ok(id);
        }
    }
    crate::catalog::as_catalog_owner(|| {
        Spi::get_one_with_args::<i64>(
            "INSERT INTO lakesync.sync_runs (target, started_at, from_version, to_version, \
             rows_inserted, rows_updated, rows_deleted, rows_skipped, change_source, status, \
             message, owner, credential) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING run_id",
            &args(),
        )
        .map_err(|e| LakeError::Internal(format!("cannot record the sync run: {e}")))?
        .ok_or_else(|| LakeError::Internal("cannot record the sync run".into()))
    })
}

/// Marks a spec failed with the error's message, in the current transaction. Never waits for a
/// row lock: the failed caller may itself hold it (it synced this table earlier in its
/// transaction) while it waits for the recorder, and a sync holding it will set the state anyway.
/// `state` is 'failed', or 'needs_full_refresh' when only a full refresh can continue; a table
/// that needs a full refresh keeps needing one whatever else fails (a failed full refresh, say).
/// A record that arrives late (its recorder waited for a lock) never overwrites a sync that
/// started after it.
pub fn mark_failed(
    target: &str,
    owner: &str,
    started: TimestampWithTimeZone,
    message: &str,
    state: &str,
) -> Result<()> {
    crate::catalog::as_catalog_owner(|| {
        Spi::run_with_args(
            "UPDATE lakesync.synced_tables SET last_error = $2, last_sync_started = $3, \
             last_sync_finished = pg_catalog.clock_timestamp(), \
             consecutive_failures = consecutive_failures OPERATOR(pg_catalog.+) 1, \
             state = CASE WHEN state OPERATOR(pg_catalog.=) 'needs_full_refresh' THEN state \
                          ELSE $4 END \
             WHERE target OPERATOR(pg_catalog.=) ANY (SELECT target FROM lakesync.synced_tables \
                 WHERE target OPERATOR(pg_catalog.=) $1 AND owner OPERATOR(pg_catalog.=) $5 \
                 AND (last_sync_started IS NULL OR last_sync_started OPERATOR(pg_catalog.<=) $3) \
                 FOR UPDATE SKIP LOCKED)",
            &[
                target.into(),
                crate::error::for_server(&crate::error::redact(message)).into(),
                started.into(),
                state.into(),
                owner.into(),
            ],
        )
        .map_err(|e| LakeError::Internal(format!("cannot record the sync failure: {e}")))
    })
}

/// What listeners of `LISTEN lakesync` are told about a committed sync.
#[derive(serde::Serialize)]
pub struct SyncNotice<'a> {
    pub target: &'a str,
    pub from_version: Option<i64>,
    pub to_version: i64,
    #[serde(rename = "rows_inserted")]
    pub inserted: i64,
    #[serde(rename = "rows_updated")]
    pub updated: i64,
    #[serde(rename = "rows_deleted")]
    pub deleted: i64,
}

/// The channel every committed sync notifies.
pub const CHANNEL: &str = "lakesync";

/// Queues `NOTIFY lakesync, '<json>'` in the sync's transaction: Postgres delivers it when (and
/// only if) the transaction commits, so a listener never hears of rows it cannot see yet, and a
/// dry run (rolled back) or a failed sync tells nobody.
pub fn notify_synced(n: &SyncNotice) -> Result<()> {
    let payload = serde_json::to_string(n).expect("serializable");
    Spi::run_with_args(
        "SELECT pg_catalog.pg_notify($1, $2)",
        &[CHANNEL.into(), payload.into()],
    )
    .map_err(|e| LakeError::Internal(format!("cannot notify {CHANNEL}: {e}")))
}
