//! One sync, end to end: source → plan → apply → record.

use crate::apply;
use crate::catalog::{self, Spec, SyncedState};
use crate::error::{LakeError, Result};
use crate::options::{Mode, SyncOptions};
use crate::plan::target::TargetName;
use crate::plan::{plan_columns, ColumnsPlan};
use crate::record::{self, RunRecord};
use crate::source::location::SourceLocation;
use crate::source::{self, scan, DeltaSource};
use pgrx::datum::TimestampWithTimeZone;
use pgrx::prelude::*;
use std::time::{Duration, Instant};

/// What a sync reports back to SQL.
pub struct SyncReport {
    pub target: String,
    pub source: String,
    pub mode: String,
    pub delta_version: i64,
    pub rows_loaded: i64,
    pub rows_skipped: i64,
    pub duration: Duration,
    pub message: String,
}

pub struct NewSyncedTable<'a> {
    pub target: &'a str,
    pub source: &'a str,
    pub primary_key: Vec<String>,
    pub mode: &'a str,
    pub options: serde_json::Value,
}

/// `create_synced_table`: validate everything, create the target, record the spec and run the
/// first sync — all in the caller's transaction, so a failure leaves nothing behind.
pub fn create(req: NewSyncedTable) -> Result<SyncReport> {
    let clock = Instant::now();
    let started = now();
    let mode = Mode::parse(req.mode)?;
    if mode != Mode::Snapshot {
        return Err(LakeError::Unsupported {
            message: format!("sync mode \"{}\" is not available yet", mode.as_str()),
            hint: Some("This release syncs in snapshot mode.".into()),
        });
    }
    let opts = SyncOptions::parse(&req.options)?;
    let target = TargetName::parse(req.target, &catalog::default_schema()?)?;
    let qualified = target.qualified();
    let location = SourceLocation::parse(req.source)?;
    location.check_access()?;
    if catalog::exists(&qualified)? {
        return Err(LakeError::invalid_with_hint(
            format!("\"{qualified}\" is already a synced table"),
            "Use sync_now() to sync it, or drop_synced_table() first.",
        ));
    }
    if catalog::relation_oid(&qualified)?.is_some() {
        return Err(LakeError::TargetExists(qualified));
    }
    let source = open_source(&location, opts.version)?;
    let plan = plan_columns(&source, &opts, &req.primary_key)?;
    let relid = apply::ddl::create_target(&target, &plan)?;
    catalog::insert_spec(&Spec {
        target: qualified.clone(),
        source: location.display(),
        mode: mode.as_str().into(),
        primary_key: req.primary_key.clone(),
        options: req.options.clone(),
        state: "new".into(),
        synced_version: None,
    })?;
    load_and_record(
        &target, relid, source, &plan, &opts, None, false, started, clock,
    )
}

/// `sync_now`: bring a synced table to the source's latest (or pinned) version.
pub fn sync_now(target: &str) -> Result<SyncReport> {
    let clock = Instant::now();
    let started = now();
    let name = TargetName::parse(target, &catalog::default_schema()?)?;
    let qualified = name.qualified();
    if !catalog::exists(&qualified)? {
        return Err(LakeError::NotSynced(qualified));
    }
    // Failures are recorded by a worker of their own, so run the sync in a subtransaction and
    // record only after it is rolled back (the spec row lock goes with it).
    let outcome = crate::subxact::run(|| sync_existing(&name, started, clock));
    match outcome {
        Ok(Ok(report)) => Ok(report),
        Ok(Err(e)) => {
            record_failure(&qualified, started, &e.to_string());
            Err(e)
        }
        Err(caught) => {
            record_failure(&qualified, started, &crate::subxact::message(&caught));
            caught.rethrow()
        }
    }
}

fn sync_existing(
    name: &TargetName,
    started: TimestampWithTimeZone,
    clock: Instant,
) -> Result<SyncReport> {
    let qualified = name.qualified();
    let spec =
        catalog::lock_spec(&qualified)?.ok_or_else(|| LakeError::NotSynced(qualified.clone()))?;
    let opts = SyncOptions::parse(&spec.options)?;
    let location = SourceLocation::parse(&spec.source)?;
    location.check_access()?;
    let relid = catalog::relation_oid(&qualified)?.ok_or_else(|| LakeError::InvalidParameter {
        message: format!("the table of synced table \"{qualified}\" no longer exists"),
        hint: Some(format!(
            "Run drop_synced_table('{qualified}') and create it again."
        )),
    })?;
    let source = open_source(&location, opts.version)?;
    let version = source.version();
    if spec.state == "synced" && spec.synced_version == Some(version) {
        return Ok(SyncReport {
            target: qualified,
            source: location.display(),
            mode: spec.mode,
            delta_version: version,
            rows_loaded: 0,
            rows_skipped: 0,
            duration: clock.elapsed(),
            message: format!("already at Delta version {version}; nothing to do"),
        });
    }
    let plan = plan_columns(&source, &opts, &spec.primary_key)?;
    check_target_columns(&qualified, relid, &plan)?;
    load_and_record(
        name,
        relid,
        source,
        &plan,
        &opts,
        spec.synced_version,
        true,
        started,
        clock,
    )
}

#[allow(clippy::too_many_arguments)]
fn load_and_record(
    target: &TargetName,
    relid: pg_sys::Oid,
    source: DeltaSource,
    plan: &ColumnsPlan,
    opts: &SyncOptions,
    from_version: Option<i64>,
    replace_existing: bool,
    started: TimestampWithTimeZone,
    clock: Instant,
) -> Result<SyncReport> {
    let qualified = target.qualified();
    let version = source.version();
    let display = source.location.display();
    let stream = scan::start(
        source,
        plan.columns.clone(),
        plan.key.clone(),
        opts.null_bytes,
    );
    let loaded = apply::snapshot::load(target, relid, plan, stream, replace_existing)?;
    let mut message = format!("synced Delta version {version}: {} rows", loaded.inserted);
    if loaded.skipped_null_key > 0 {
        message.push_str(&format!(
            ", {} rows with a NULL primary key skipped",
            loaded.skipped_null_key
        ));
    }
    if loaded.superseded > 0 {
        message.push_str(&format!(
            ", {} older rows replaced by timeseries_key",
            loaded.superseded
        ));
    }
    record::insert_run(&RunRecord {
        target: qualified.clone(),
        started,
        from_version,
        to_version: Some(version),
        inserted: loaded.inserted as i64,
        updated: 0,
        deleted: loaded.deleted as i64,
        skipped: loaded.skipped_null_key as i64,
        change_source: Some("snapshot".into()),
        succeeded: true,
        message: Some(message.clone()),
    })?;
    catalog::mark_synced(
        &qualified,
        &SyncedState {
            version,
            rows: loaded.inserted as i64,
            started,
        },
    )?;
    Ok(SyncReport {
        target: qualified,
        source: display,
        mode: Mode::Snapshot.as_str().into(),
        delta_version: version,
        rows_loaded: loaded.inserted as i64,
        rows_skipped: loaded.skipped_null_key as i64,
        duration: clock.elapsed(),
        message,
    })
}

/// Snapshot mode cannot change the table's shape yet: a changed Delta schema is an error that
/// says what changed, before anything is deleted.
fn check_target_columns(qualified: &str, relid: pg_sys::Oid, plan: &ColumnsPlan) -> Result<()> {
    let existing = catalog::table_columns(relid)?;
    for c in &plan.columns {
        match existing.iter().find(|(n, _)| *n == c.name) {
            None => {
                return Err(LakeError::Unsupported {
                    message: format!(
                        "the Delta table gained column \"{}\", which synced table \"{qualified}\" does not have",
                        c.name
                    ),
                    hint: Some("Drop the synced table and create it again to pick up the new schema.".into()),
                })
            }
            Some((_, t)) if *t != c.pg.sql() => {
                return Err(LakeError::Unsupported {
                    message: format!(
                        "column \"{}\" of the Delta table now maps to {}, but synced table \"{qualified}\" has {t}",
                        c.name,
                        c.pg.sql()
                    ),
                    hint: Some("Drop the synced table and create it again to pick up the new schema.".into()),
                })
            }
            _ => {}
        }
    }
    Ok(())
}

/// Opens the source off the backend's thread, answering cancel requests while it waits.
fn open_source(location: &SourceLocation, version: Option<i64>) -> Result<DeltaSource> {
    let loc = location.clone();
    crate::offload::run(move || source::open(&loc, version))
}

fn record_failure(target: &str, started: TimestampWithTimeZone, message: &str) {
    record::autonomous::record_failure(&RunRecord {
        target: target.to_string(),
        started,
        from_version: None,
        to_version: None,
        inserted: 0,
        updated: 0,
        deleted: 0,
        skipped: 0,
        change_source: Some("snapshot".into()),
        succeeded: false,
        message: Some(message.to_string()),
    });
}

fn now() -> TimestampWithTimeZone {
    unsafe {
        TimestampWithTimeZone::from_datum(pg_sys::Datum::from(pg_sys::GetCurrentTimestamp()), false)
            .expect("current timestamp")
    }
}

/// `drop_synced_table`: forget the spec; drop the table only when asked.
pub fn drop(target: &str, drop_data: bool) -> Result<bool> {
    let name = TargetName::parse(target, &catalog::default_schema()?)?;
    let qualified = name.qualified();
    if !catalog::delete_spec(&qualified)? {
        return Err(LakeError::NotSynced(qualified));
    }
    if drop_data && catalog::relation_oid(&qualified)?.is_some() {
        Spi::run(&format!("DROP TABLE {qualified}"))
            .map_err(|e| LakeError::Internal(format!("cannot drop {qualified}: {e}")))?;
    }
    Ok(true)
}
