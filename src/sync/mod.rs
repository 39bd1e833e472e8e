//! One sync, end to end: source → plan → apply → record.
//!
//! A call resolves a [`job::SyncJob`] once (spec, role, target, source), a pure
//! [`decide::decide`] says what the sync must do, and [`execute`] does it inside a
//! [`runner::Runner`], which owns the transaction and records a failure. `steps` turns an
//! incremental decision into staged changes.

pub mod decide;
pub mod execute;
pub mod job;
pub mod report;
pub mod runner;
pub mod steps;

use crate::apply;
use crate::catalog::{self, Caller, Spec, State};
use crate::error::{LakeError, Result};
use crate::options::{ChangeDetection, Mode, SyncOptions};
use crate::plan::evolve;
use crate::plan::plan_columns;
use crate::plan::target::TargetName;
use crate::source::location::SourceLocation;
use crate::source::{self, changes, DeltaSource};
use decide::{decide, Facts};
use execute::{Load, Run};
use job::SyncJob;
use pgrx::datum::TimestampWithTimeZone;
use pgrx::prelude::*;
pub use report::{NewSyncedTable, SyncReport};
use runner::{Background, Interactive, RunFor, Runner};
use std::time::Instant;

/// `create_synced_table`: validate everything, create the target, record the spec and run the
/// first sync — all in the caller's transaction, so a failure leaves nothing behind.
pub fn create(req: NewSyncedTable) -> Result<SyncReport> {
    crate::error::forget_raised();
    crate::record::set_credential_in_use(None);
    let clock = Instant::now();
    let started = now();
    // Names resolve through the caller's search_path; everything after runs under a safe one.
    let target = TargetName::for_new(req.target)?;
    crate::session::with_safe_search_path(|| create_named(req, target, started, clock))
}

fn create_named(
    req: NewSyncedTable,
    target: TargetName,
    started: TimestampWithTimeZone,
    clock: Instant,
) -> Result<SyncReport> {
    let mode = Mode::parse(req.mode)?;
    let opts = SyncOptions::parse(&req.options)?;
    check_mode_options(mode, &req.primary_key, &req.options)?;
    let qualified = target.qualified();
    let location = crate::credentials::locate(
        req.source,
        &catalog::current_role_name(),
        opts.credential.as_deref(),
    )?;
    if catalog::exists(&qualified, None)? {
        return Err(LakeError::invalid_with_hint(
            format!("\"{qualified}\" is already a synced table"),
            "Use sync_now() to sync it, or drop_synced_table() first.",
        ));
    }
    if catalog::relation_oid(&qualified)?.is_some() {
        return Err(LakeError::TargetExists(qualified));
    }
    let source = open_source(&location, opts.version)?;
    require_change_feed(mode, &opts, &location, &source)?;
    let plan = plan_columns(&source, &opts, &req.primary_key)?;
    let relid = apply::ddl::create_target(&target, &plan)?;
    if opts.read_only {
        apply::guard::set_read_only(&target, true)?;
    }
    let caller = catalog::caller();
    catalog::insert_spec(
        &Spec {
            target: qualified.clone(),
            source: location.display(),
            mode: mode.as_str().into(),
            primary_key: req.primary_key.clone(),
            options: req.options.clone(),
            state: State::New,
            synced_version: None,
            delta_table_id: None,
            synced_columns: None,
            owner: caller.name.clone(),
            target_relid: Some(relid),
        },
        relid,
        &caller,
    )?;
    let run = Run::new(
        &target,
        &caller.name,
        relid,
        mode,
        &opts,
        (started, clock),
        Vec::new(),
        &plan,
    );
    let first = Load::First {
        options: &req.options,
        primary_key: &req.primary_key,
    };
    execute::load_snapshot(&run, source, &plan, first)
}

/// An incremental mode reading the change feed needs a table that writes one.
fn require_change_feed(
    mode: Mode,
    opts: &SyncOptions,
    location: &SourceLocation,
    source: &DeltaSource,
) -> Result<()> {
    if mode.incremental()
        && opts.change_detection == ChangeDetection::Cdf
        && !changes::cdf_enabled(source)
    {
        return Err(LakeError::Unsupported {
            message: format!(
                "Delta table \"{}\" does not have its change data feed enabled, which {} mode reads",
                location.display(),
                mode.as_str()
            ),
            hint: Some(format!(
                "Enable it in Delta: ALTER TABLE delta.`{}` SET TBLPROPERTIES (delta.enableChangeDataFeed = true); or pass option \"change_detection\": \"files\" to derive the changes from the data files.",
                location.display()
            )),
        });
    }
    Ok(())
}

/// `pause_sync` / `resume_sync`: stop or restart the background worker's syncs of a table
/// (`sync_now` still works while it is paused).
pub fn set_paused(target: &str, paused: bool) -> Result<bool> {
    let name = TargetName::for_existing(target)?;
    crate::session::with_safe_search_path(|| {
        let qualified = name.qualified();
        if !catalog::set_paused(&qualified, &catalog::caller(), paused)? {
            return Err(LakeError::NotSynced(qualified));
        }
        Ok(true)
    })
}

/// `alter_synced_table`: a new mode and/or options (schedule, on_gap, ...) for a synced table,
/// checked as `create_synced_table` checks them; the next sync goes on from the synced version.
pub fn alter(target: &str, mode: Option<&str>, options: Option<serde_json::Value>) -> Result<bool> {
    let name = TargetName::for_existing(target)?;
    crate::session::with_safe_search_path(|| {
        let qualified = name.qualified();
        let caller = catalog::caller();
        let spec = catalog::lock_spec(&qualified, &caller)?
            .ok_or_else(|| LakeError::NotSynced(qualified.clone()))?;
        let mode = Mode::parse(mode.unwrap_or(&spec.mode))?;
        let options = options.unwrap_or_else(|| spec.options.clone());
        let opts = SyncOptions::parse(&options)?;
        check_mode_options(mode, &spec.primary_key, &options)?;
        let cdf = mode.incremental() && opts.change_detection == ChangeDetection::Cdf;
        if cdf || SourceLocation::parse(&spec.source)?.provider().is_some() {
            // The credential it would use must exist (and the change feed, for cdf).
            let location =
                crate::credentials::locate(&spec.source, &spec.owner, opts.credential.as_deref())?;
            if cdf {
                let source = open_source(&location, opts.version)?;
                require_change_feed(mode, &opts, &location, &source)?;
            }
        }
        let altered = catalog::set_mode_options(&qualified, &caller, mode.as_str(), &options)?;
        if altered {
            apply::guard::set_read_only(&name, opts.read_only)?;
        }
        Ok(altered)
    })
}

/// What a mode requires of the spec, checked before anything is created (or altered).
pub fn check_mode_options(
    mode: Mode,
    primary_key: &[String],
    raw: &serde_json::Value,
) -> Result<()> {
    if mode.incremental() {
        if primary_key.is_empty() {
            return Err(LakeError::invalid_with_hint(
                format!(
                    "{} mode needs a primary key to apply changes by",
                    mode.as_str()
                ),
                "Pass primary_key => ARRAY['...'] to create_synced_table.",
            ));
        }
    } else {
        for name in ["on_gap", "change_detection"] {
            if raw.get(name).is_some() {
                return Err(LakeError::invalid(format!(
                    "option \"{name}\" applies to triggered and continuous modes only"
                )));
            }
        }
    }
    let opts = SyncOptions::parse(raw)?;
    if mode == Mode::Continuous && opts.version.is_some() {
        return Err(LakeError::invalid_with_hint(
            "option \"version\" pins a table to one Delta version; continuous mode follows the latest",
            "Use snapshot or triggered mode with a pinned version.",
        ));
    }
    if let Some(schedule) = opts.schedule {
        if mode == Mode::Continuous {
            return Err(LakeError::invalid_with_hint(
                "option \"schedule\" applies to snapshot and triggered modes only",
                "A continuous table is synced as each new Delta version appears.",
            ));
        }
        crate::worker::schedule::check(&schedule)?;
    }
    Ok(())
}

/// `sync_now`: bring a synced table to the source's latest (or pinned) version. A dry run does
/// all the work in a subtransaction it then rolls back, so its counts are exact.
pub fn sync_now(target: &str, dry_run: bool) -> Result<SyncReport> {
    let report = run_recorded(target, Via::Call { keep: !dry_run }, false)?;
    if dry_run {
        return Ok(SyncReport {
            message: format!("dry run, nothing changed: {}", report.message),
            ..report
        });
    }
    Ok(report)
}

/// `full_refresh`: rebuild the table from the latest version, whatever its state.
pub fn full_refresh(target: &str) -> Result<SyncReport> {
    run_recorded(target, Via::Call { keep: true }, true)
}

/// What the background worker syncs for the table with OID `relid`, and as whom: its spec's
/// target and the table's owner — who must own the spec too (a table given to another role
/// would otherwise run that role's triggers with the spec owner's rights). A mismatch is
/// recorded as the spec's failure; None then.
pub fn worker_job(relid: pg_sys::Oid) -> Result<Option<(String, pg_sys::Oid)>> {
    let Some((target, spec_owner)) = catalog::spec_of_relation(relid)? else {
        return Ok(None); // dropped since the scheduler looked
    };
    let (owner, owner_name) = catalog::relation_owner(relid)?;
    if owner_name == spec_owner {
        // Committed before the sync starts: a crash mid-sync leaves it 'running', for the
        // scheduler to mark failed.
        crate::record::claim_running_run(&target, &spec_owner)?;
        return Ok(Some((target, owner)));
    }
    let message = format!(
        "the table of synced table \"{target}\" is owned by \"{owner_name}\" but its spec by \"{spec_owner}\"; the background worker syncs as the table's owner, who must own the spec"
    );
    let started = now();
    crate::record::insert_run(&crate::record::RunRecord::failed(
        &target,
        &spec_owner,
        started,
        &message,
    ))?;
    crate::record::mark_failed(
        &target,
        &spec_owner,
        started,
        &message,
        State::Failed.as_str(),
    )?;
    Ok(None)
}

/// A sync the background worker runs, as the table's owner (the worker has become that role for
/// the rest of its life, commit included), in the worker's transaction. A failure is recorded in
/// it and returned (not raised).
pub fn sync_in_worker(target: &str) -> Result<SyncReport> {
    run_recorded(target, Via::Worker, false)
}

/// Which runner a sync of an existing synced table goes through.
enum Via {
    /// A SQL call in the caller's transaction (`keep` false: a dry run).
    Call { keep: bool },
    /// The background worker.
    Worker,
}

fn run_recorded(target: &str, via: Via, full: bool) -> Result<SyncReport> {
    crate::error::forget_raised();
    crate::record::set_credential_in_use(None);
    let clock = Instant::now();
    let started = now();
    let name = TargetName::for_existing(target)?;
    crate::session::with_safe_search_path(|| {
        let qualified = name.qualified();
        let caller = catalog::caller();
        if !catalog::exists(&qualified, Some(&caller))? {
            return Err(LakeError::NotSynced(qualified));
        }
        let run_for = RunFor::new(&caller, started);
        let at = (started, clock);
        match via {
            Via::Call { keep } => run_via(&Interactive { keep, run_for }, &name, &caller, full, at),
            Via::Worker => run_via(&Background { run_for }, &name, &caller, full, at),
        }
    })
}

fn run_via<R: Runner>(
    runner: &R,
    name: &TargetName,
    caller: &Caller,
    full: bool,
    (started, clock): (TimestampWithTimeZone, Instant),
) -> Result<SyncReport> {
    runner.run(&name.qualified(), || {
        let job = SyncJob::resolve(name, caller, |spec| {
            runner
                .run_for()
                .locked_owner
                .replace(Some(spec.owner.clone()));
        })?;
        sync_job(&job, full, started, clock)
    })
}

/// One sync of a resolved job: read the source's metadata, decide, execute.
fn sync_job(
    job: &SyncJob,
    full: bool,
    started: TimestampWithTimeZone,
    clock: Instant,
) -> Result<SyncReport> {
    let source = open_source(&job.location, job.opts.version)?;
    let plan = plan_columns(&source, &job.opts, &job.spec.primary_key)?;
    let schema = evolve::diff(
        &catalog::synced_columns(job.relid, job.spec.synced_columns.as_deref())?,
        &plan,
    );
    let qualified = job.name.qualified();
    let (display, table_id) = (job.location.display(), changes::table_id(&source));
    let decision = decide(&Facts {
        target: &qualified,
        source: &display,
        mode: job.mode,
        on_gap: job.opts.on_gap,
        state: job.spec.state,
        synced_version: job.spec.synced_version,
        synced_table_id: job.spec.delta_table_id.as_deref(),
        version: source.version(),
        table_id: &table_id,
        schema_changed: !schema.is_empty(),
        lossy: schema
            .iter()
            .filter(|c| !c.keeps_data())
            .map(|c| c.describe())
            .collect(),
        full_refresh: full,
        diffable: !plan.key.is_empty() && plan.timeseries.is_none() && job.opts.read_only,
    });
    let run = Run::new(
        &job.name,
        &job.spec.owner,
        job.relid,
        job.mode,
        &job.opts,
        (started, clock),
        schema,
        &plan,
    );
    execute::execute(&run, source, &plan, job.spec.synced_version, decision)
}

/// Opens the source off the backend's thread, answering cancel requests while it waits.
fn open_source(location: &SourceLocation, version: Option<i64>) -> Result<DeltaSource> {
    let loc = location.clone();
    let delay = crate::debug::pause_at("open");
    crate::offload::run(move || {
        if let Some(ms) = delay {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
        source::open(&loc, version)
    })
}

fn now() -> TimestampWithTimeZone {
    unsafe {
        TimestampWithTimeZone::from_datum(pg_sys::Datum::from(pg_sys::GetCurrentTimestamp()), false)
            .expect("current timestamp")
    }
}

/// `drop_synced_table`: forget the spec; drop the table only when asked.
pub fn drop(target: &str, drop_data: bool) -> Result<bool> {
    let name = TargetName::for_existing(target)?;
    crate::session::with_safe_search_path(|| drop_named(&name, drop_data))
}

fn drop_named(name: &TargetName, drop_data: bool) -> Result<bool> {
    let qualified = name.qualified();
    // The table before the spec row, as a sync takes them (job::lock_target).
    let mode = if drop_data {
        pg_sys::AccessExclusiveLock
    } else {
        pg_sys::ShareUpdateExclusiveLock
    };
    let relid = job::lock_target(&qualified, mode)?;
    if !catalog::delete_spec(&qualified, &catalog::caller())? {
        return Err(LakeError::NotSynced(qualified));
    }
    if drop_data && relid.is_some() {
        Spi::run(&format!("DROP TABLE {qualified}"))
            .map_err(|e| LakeError::Internal(format!("cannot drop {qualified}: {e}")))?;
    }
    Ok(true)
}
