//! One sync, end to end: source → plan → apply → record.

use crate::apply;
use crate::apply::changes::{Applied, StagePart};
use crate::catalog::{self, RowCount, Spec, SyncedState};
use crate::error::{LakeError, Result};
use crate::options::{ChangeDetection, Mode, NullBytes, OnGap, SyncOptions};
use crate::plan::evolve::{self, Change};
use crate::plan::target::TargetName;
use crate::plan::{plan_columns, ColumnsPlan};
use crate::record::{self, RunRecord};
use crate::source::location::SourceLocation;
use crate::source::{self, changes, files, scan, DeltaSource};
use pgrx::datum::TimestampWithTimeZone;
use pgrx::prelude::*;
use std::time::{Duration, Instant};

/// What a sync reports back to SQL.
pub struct SyncReport {
    pub target: String,
    pub source: String,
    pub mode: String,
    /// Where the rows came from: "snapshot" (a full read), "cdf" (the change feed) or "none".
    pub change_source: &'static str,
    pub from_version: Option<i64>,
    pub delta_version: i64,
    pub inserted: i64,
    pub updated: i64,
    pub deleted: i64,
    pub skipped: i64,
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

/// One sync's context, shared by its steps.
struct Run<'a> {
    target: &'a TargetName,
    relid: pg_sys::Oid,
    mode: Mode,
    opts: &'a SyncOptions,
    started: TimestampWithTimeZone,
    clock: Instant,
    /// How the target's columns must change to hold the source's schema.
    schema: Vec<Change>,
    evolved: std::cell::Cell<bool>,
    /// The target columns the sync writes (the plan's).
    columns: Vec<String>,
}

impl Run<'_> {
    /// Applies the schema changes to the target, once.
    fn evolve(&self) -> Result<()> {
        if !self.evolved.replace(true) {
            apply::ddl::evolve(self.target, &self.schema)?;
        }
        Ok(())
    }
}

/// `create_synced_table`: validate everything, create the target, record the spec and run the
/// first sync — all in the caller's transaction, so a failure leaves nothing behind.
pub fn create(req: NewSyncedTable) -> Result<SyncReport> {
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
    if mode == Mode::Continuous {
        return Err(LakeError::Unsupported {
            message: "sync mode \"continuous\" is not available yet".into(),
            hint: Some("Use mode \"triggered\" and call sync_now() as often as needed.".into()),
        });
    }
    let opts = SyncOptions::parse(&req.options)?;
    check_mode_options(mode, &req.primary_key, &req.options)?;
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
    if mode == Mode::Triggered
        && opts.change_detection == ChangeDetection::Cdf
        && !changes::cdf_enabled(&source)
    {
        return Err(LakeError::Unsupported {
            message: format!(
                "Delta table \"{}\" does not have its change data feed enabled, which triggered mode reads",
                location.display()
            ),
            hint: Some(format!(
                "Enable it in Delta: ALTER TABLE delta.`{}` SET TBLPROPERTIES (delta.enableChangeDataFeed = true); or pass option \"change_detection\": \"files\" to derive the changes from the data files.",
                location.display()
            )),
        });
    }
    let plan = plan_columns(&source, &opts, &req.primary_key)?;
    let relid = apply::ddl::create_target(&target, &plan)?;
    catalog::insert_spec(
        &Spec {
            target: qualified.clone(),
            source: location.display(),
            mode: mode.as_str().into(),
            primary_key: req.primary_key.clone(),
            options: req.options.clone(),
            state: "new".into(),
            synced_version: None,
            delta_table_id: None,
            synced_columns: None,
        },
        &catalog::caller(),
    )?;
    let run = Run {
        target: &target,
        relid,
        mode,
        opts: &opts,
        started,
        clock,
        schema: Vec::new(),
        evolved: Default::default(),
        columns: plan.columns.iter().map(|c| c.name.clone()).collect(),
    };
    load_snapshot(&run, source, &plan, None, false, None)
}

/// What a mode requires of the spec, checked before anything is created.
fn check_mode_options(mode: Mode, primary_key: &[String], raw: &serde_json::Value) -> Result<()> {
    match mode {
        Mode::Triggered => {
            if primary_key.is_empty() {
                return Err(LakeError::invalid_with_hint(
                    "triggered mode needs a primary key to apply changes by",
                    "Pass primary_key => ARRAY['...'] to create_synced_table.",
                ));
            }
        }
        _ => {
            for name in ["on_gap", "change_detection"] {
                if raw.get(name).is_some() {
                    return Err(LakeError::invalid(format!(
                        "option \"{name}\" applies to triggered mode only"
                    )));
                }
            }
        }
    }
    Ok(())
}

/// `sync_now`: bring a synced table to the source's latest (or pinned) version. A dry run does
/// all the work in a subtransaction it then rolls back, so its counts are exact.
pub fn sync_now(target: &str, dry_run: bool) -> Result<SyncReport> {
    let report = run_recorded(target, !dry_run, false)?;
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
    run_recorded(target, true, true)
}

/// Runs a sync of an existing synced table in a subtransaction; a failure is recorded by a
/// worker of its own after the subtransaction (and the spec row lock with it) is rolled back.
fn run_recorded(target: &str, keep: bool, full: bool) -> Result<SyncReport> {
    let clock = Instant::now();
    let started = now();
    let name = TargetName::for_existing(target)?;
    crate::session::with_safe_search_path(|| run_recorded_named(name, keep, full, started, clock))
}

fn run_recorded_named(
    name: TargetName,
    keep: bool,
    full: bool,
    started: TimestampWithTimeZone,
    clock: Instant,
) -> Result<SyncReport> {
    let qualified = name.qualified();
    let caller = catalog::caller();
    if !catalog::exists(&qualified)? {
        return Err(LakeError::NotSynced(qualified));
    }
    let outcome = crate::subxact::run(keep, || sync_existing(&name, &caller, full, started, clock));
    match outcome {
        Ok(Ok(report)) => Ok(report),
        Ok(Err(e)) => {
            if keep {
                record_failure(
                    &qualified,
                    &caller,
                    started,
                    &e.to_string(),
                    e.needs_full_refresh(),
                );
            }
            Err(e)
        }
        Err(caught) => {
            if keep {
                record_failure(
                    &qualified,
                    &caller,
                    started,
                    &crate::subxact::message(&caught),
                    crate::subxact::needs_full_refresh(&caught),
                );
            }
            caught.rethrow()
        }
    }
}

fn sync_existing(
    name: &TargetName,
    caller: &catalog::Caller,
    full: bool,
    started: TimestampWithTimeZone,
    clock: Instant,
) -> Result<SyncReport> {
    let qualified = name.qualified();
    let spec = catalog::lock_spec(&qualified, caller)?
        .ok_or_else(|| LakeError::NotSynced(qualified.clone()))?;
    let opts = SyncOptions::parse(&spec.options)?;
    let mode = Mode::parse(&spec.mode)?;
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
    let plan = plan_columns(&source, &opts, &spec.primary_key)?;
    let run = Run {
        target: name,
        relid,
        mode,
        opts: &opts,
        started,
        clock,
        schema: evolve::diff(
            &catalog::synced_columns(relid, spec.synced_columns.as_deref())?,
            &plan,
        ),
        evolved: Default::default(),
        columns: plan.columns.iter().map(|c| c.name.clone()).collect(),
    };
    if full {
        return load_snapshot(
            &run,
            source,
            &plan,
            spec.synced_version,
            true,
            Some("requested"),
        );
    }
    let lossy: Vec<String> = run
        .schema
        .iter()
        .filter(|c| !c.keeps_data())
        .map(|c| c.describe())
        .collect();
    if !lossy.is_empty() {
        let e = LakeError::SchemaChanged {
            target: qualified,
            detail: lossy.join("; "),
        };
        return match (mode, opts.on_gap) {
            (Mode::Triggered, OnGap::FullRefresh) => load_snapshot(
                &run,
                source,
                &plan,
                spec.synced_version,
                true,
                Some(&e.to_string()),
            ),
            _ => Err(e),
        };
    }
    // A new table at the same path (a new id) is never "the version already synced", even when
    // it has reached the same version number.
    let replaced = spec
        .delta_table_id
        .as_deref()
        .is_some_and(|old| old != changes::table_id(&source));
    if spec.state == "synced"
        && spec.synced_version == Some(version)
        && run.schema.is_empty()
        && !replaced
    {
        return Ok(SyncReport {
            target: qualified,
            source: location.display(),
            mode: spec.mode,
            change_source: "none",
            from_version: spec.synced_version,
            delta_version: version,
            inserted: 0,
            updated: 0,
            deleted: 0,
            skipped: 0,
            duration: clock.elapsed(),
            message: format!("already at Delta version {version}; nothing to do"),
        });
    }
    let synced = match (mode, spec.synced_version) {
        (Mode::Triggered, Some(v)) => v,
        // Snapshot mode, or a first sync that never completed: read it all.
        _ => {
            let why = replaced.then_some("the Delta table was replaced by a new one");
            return load_snapshot(&run, source, &plan, spec.synced_version, true, why);
        }
    };
    let planned = if spec.state == "needs_full_refresh" {
        Err(LakeError::Gap {
            reason: format!(
                "synced table \"{qualified}\" needs a full refresh since an earlier sync failed"
            ),
        })
    } else if let Some(gap) = find_gap(&source, &spec, synced) {
        Err(gap)
    } else {
        match opts.change_detection {
            ChangeDetection::Cdf => segments(&source, &plan, synced)
                .map(|segs| (cdf_steps(&source, segs, opts.null_bytes), "cdf")),
            ChangeDetection::Files => {
                file_steps(&source, &plan, synced, opts.null_bytes).map(|s| (s, "files"))
            }
        }
    };
    match planned {
        Ok((steps, change_source)) => {
            apply_changes(&run, source, &plan, synced, steps, change_source)
        }
        Err(gap) if gap.needs_full_refresh() && opts.on_gap == OnGap::FullRefresh => load_snapshot(
            &run,
            source,
            &plan,
            Some(synced),
            true,
            Some(&gap.to_string()),
        ),
        Err(e) => Err(e),
    }
}

/// A reason the versions after `synced` cannot be replayed, known before reading the range.
fn find_gap(source: &DeltaSource, spec: &Spec, synced: i64) -> Option<LakeError> {
    let display = source.location.display();
    let id = changes::table_id(source);
    if let Some(old) = spec.delta_table_id.as_deref() {
        if old != id {
            return Some(LakeError::Gap {
                reason: format!(
                    "Delta table \"{display}\" was replaced by a new table (its id changed from {old} to {id})"
                ),
            });
        }
    }
    let version = source.version();
    if version < synced {
        return Some(LakeError::Gap {
            reason: format!(
                "Delta table \"{display}\" is at version {version}, older than synced version {synced}"
            ),
        });
    }
    None
}

/// A range of versions with one schema, and the plan to read its changes with.
struct Segment {
    from: i64,
    to: i64,
    plan: ColumnsPlan,
}

/// Splits `synced+1..=latest` where the Delta schema changed — any change, also to columns the
/// target does not sync (the change feed is read with one schema at a time) — and checks each
/// piece can be replayed.
fn segments(source: &DeltaSource, plan: &ColumnsPlan, synced: i64) -> Result<Vec<Segment>> {
    let (from, to) = (synced + 1, source.version());
    if to < from {
        return Ok(Vec::new());
    }
    let mut bounds = vec![from];
    let src = source.clone();
    let found = crate::offload::run(move || changes::metadata_versions(&src, from, to))?;
    bounds.extend(found.into_iter().filter(|&v| v > from));
    let mut out = Vec::with_capacity(bounds.len());
    for (i, &start) in bounds.iter().enumerate() {
        let end = bounds.get(i + 1).map_or(to, |next| next - 1);
        let src = source.clone();
        crate::offload::run(move || changes::check_range(&src, start, end))?;
        let seg_plan = if bounds.len() == 1 {
            plan.clone()
        } else {
            let src = source.clone();
            let present = crate::offload::run(move || changes::columns_at(&src, start))?;
            plan.restricted_to(&present).ok_or_else(|| LakeError::Gap {
                reason: format!(
                    "Delta table \"{}\" did not have all primary key columns at version {start}",
                    source.location.display()
                ),
            })?
        };
        out.push(Segment {
            from: start,
            to: end,
            plan: seg_plan,
        });
    }
    Ok(out)
}

/// One round of staged changes: the plan their rows follow and where the rows come from.
struct Step {
    plan: ColumnsPlan,
    parts: Vec<StagePart>,
}

/// The change feed of each segment, one step each.
fn cdf_steps(source: &DeltaSource, segments: Vec<Segment>, null_bytes: NullBytes) -> Vec<Step> {
    segments
        .into_iter()
        .map(|seg| {
            let (src, columns, key) = (
                source.clone(),
                seg.plan.columns.clone(),
                seg.plan.key.clone(),
            );
            let (from, to) = (seg.from, seg.to);
            let part = StagePart::all(&seg.plan, move || {
                changes::start(src, columns, key, null_bytes, from, to)
            });
            Step {
                plan: seg.plan,
                parts: vec![part],
            }
        })
        .collect()
}

/// The changes since `synced` derived from the data files: the keys of files gone since then
/// (deletes) and the rows of files new since then (upserts), in one step.
fn file_steps(
    source: &DeltaSource,
    plan: &ColumnsPlan,
    synced: i64,
    null_bytes: NullBytes,
) -> Result<Vec<Step>> {
    let src = source.clone();
    let diff = match crate::offload::run(move || files::diff(&src, synced))? {
        Some(d) if !d.is_empty() => std::sync::Arc::new(d),
        _ => return Ok(Vec::new()), // only compaction, or nothing at all
    };
    let mut parts = Vec::new();
    if !diff.gone.is_empty() {
        let key_columns: Vec<_> = plan.key.iter().map(|&k| plan.columns[k].clone()).collect();
        let (src, d) = (source.clone(), diff.clone());
        parts.push(StagePart {
            columns: key_columns.iter().map(|c| c.name.clone()).collect(),
            stream: Box::new(move || files::start_gone(src, &d, key_columns, null_bytes)),
        });
    }
    if !diff.new.is_empty() {
        let (src, d) = (source.clone(), diff.clone());
        let (columns, key) = (plan.columns.clone(), plan.key.clone());
        parts.push(StagePart::all(plan, move || {
            files::start_new(src, &d, columns, key, null_bytes)
        }));
    }
    Ok(vec![Step {
        plan: plan.clone(),
        parts,
    }])
}

/// Applies the steps after adding and widening columns. A gap found while reading (a vacuumed
/// file, say) is handled like one found before, per option on_gap.
fn apply_changes(
    run: &Run,
    source: DeltaSource,
    plan: &ColumnsPlan,
    synced: i64,
    steps: Vec<Step>,
    change_source: &'static str,
) -> Result<SyncReport> {
    run.evolve()?;
    let mut total = Counts::default();
    for step in steps {
        let (plan_of_step, parts) = (step.plan, step.parts);
        let applied = crate::subxact::run(true, || {
            apply::changes::apply(run.target, &plan_of_step, parts)
        });
        let applied = match applied {
            Ok(r) => r?,
            Err(caught)
                if run.opts.on_gap == OnGap::FullRefresh
                    && crate::subxact::needs_full_refresh(&caught) =>
            {
                let why = crate::subxact::message(&caught);
                return load_snapshot(run, source, plan, Some(synced), true, Some(&why));
            }
            Err(caught) => caught.rethrow(),
        };
        match applied {
            Applied::NeedsSnapshot => {
                return load_snapshot(
                    run,
                    source,
                    plan,
                    Some(synced),
                    true,
                    Some("timeseries_key with deletes or updates in the changes"),
                )
            }
            Applied::Changes(c) => {
                total.inserted += c.inserted as i64;
                total.updated += c.updated as i64;
                total.deleted += c.deleted as i64;
                total.skipped += c.skipped_null_key as i64;
            }
        }
    }
    record_success(run, &source, Some(synced), change_source, total, None)
}

#[derive(Default, Clone, Copy)]
struct Counts {
    inserted: i64,
    updated: i64,
    deleted: i64,
    skipped: i64,
    superseded: i64,
}

/// Replaces the target's contents with the source's rows (the first sync, SNAPSHOT mode, and
/// every full refresh). `why` says why a triggered table was reloaded in full.
fn load_snapshot(
    run: &Run,
    source: DeltaSource,
    plan: &ColumnsPlan,
    from_version: Option<i64>,
    replace_existing: bool,
    why: Option<&str>,
) -> Result<SyncReport> {
    // A type change or a dropped column is applied after the old rows are gone.
    let cleared = if replace_existing && run.schema.iter().any(|c| !c.keeps_data()) {
        Some(apply::snapshot::clear(run.target)?)
    } else {
        None
    };
    run.evolve()?;
    let meta = source.clone();
    let stream = scan::start(
        source,
        plan.columns.clone(),
        plan.key.clone(),
        run.opts.null_bytes,
    );
    let loaded = apply::snapshot::load(
        run.target,
        run.relid,
        plan,
        stream,
        replace_existing && cleared.is_none(),
    )?;
    if !replace_existing {
        // A new target: its key's index is built once the rows are in (see create_target).
        apply::ddl::add_primary_key(run.target, plan)?;
    }
    record_success(
        run,
        &meta,
        from_version,
        "snapshot",
        Counts {
            inserted: loaded.inserted as i64,
            updated: 0,
            deleted: cleared.unwrap_or(loaded.deleted) as i64,
            skipped: loaded.skipped_null_key as i64,
            superseded: loaded.superseded as i64,
        },
        why,
    )
}

/// Records a successful sync (run row and spec state) in the sync's own transaction.
fn record_success(
    run: &Run,
    source: &DeltaSource,
    from_version: Option<i64>,
    change_source: &'static str,
    c: Counts,
    why: Option<&str>,
) -> Result<SyncReport> {
    let qualified = run.target.qualified();
    let version = source.version();
    let mut message = match change_source {
        "snapshot" => format!("synced Delta version {version}: {} rows", c.inserted),
        _ => format!(
            "applied Delta versions {}..{version} from the change feed: {} inserted, {} updated, {} deleted",
            from_version.map(|v| v + 1).unwrap_or(0).min(version),
            c.inserted,
            c.updated,
            c.deleted
        ),
    };
    if c.skipped > 0 {
        message.push_str(&format!(
            ", {} rows with a NULL primary key skipped",
            c.skipped
        ));
    }
    if c.superseded > 0 {
        message.push_str(&format!(
            ", {} older rows replaced by timeseries_key",
            c.superseded
        ));
    }
    if !run.schema.is_empty() {
        let notes: Vec<String> = run.schema.iter().map(Change::describe).collect();
        message.push_str(&format!("; schema: {}", notes.join(", ")));
    }
    if let Some(why) = why {
        message.push_str(&format!(" (full refresh: {why})"));
    }
    record::insert_run(&RunRecord {
        target: qualified.clone(),
        owner: catalog::current_role_name(),
        started: run.started,
        from_version,
        to_version: Some(version),
        inserted: c.inserted,
        updated: c.updated,
        deleted: c.deleted,
        skipped: c.skipped,
        change_source: Some(change_source.into()),
        succeeded: true,
        message: Some(message.clone()),
    })?;
    catalog::mark_synced(
        &qualified,
        &SyncedState {
            version,
            table_id: changes::table_id(source),
            rows: match change_source {
                "snapshot" => RowCount::Exactly(c.inserted),
                _ => RowCount::ChangedBy(c.inserted - c.deleted),
            },
            started: run.started,
            columns: run.columns.clone(),
        },
    )?;
    crate::debug::pause_point("commit");
    Ok(SyncReport {
        target: qualified,
        source: source.location.display(),
        mode: run.mode.as_str().into(),
        change_source,
        from_version,
        delta_version: version,
        inserted: c.inserted,
        updated: c.updated,
        deleted: c.deleted,
        skipped: c.skipped,
        duration: run.clock.elapsed(),
        message,
    })
}

/// Opens the source off the backend's thread, answering cancel requests while it waits.
fn open_source(location: &SourceLocation, version: Option<i64>) -> Result<DeltaSource> {
    let loc = location.clone();
    crate::offload::run(move || source::open(&loc, version))
}

fn record_failure(
    target: &str,
    caller: &catalog::Caller,
    started: TimestampWithTimeZone,
    message: &str,
    needs_full_refresh: bool,
) {
    let state = if needs_full_refresh {
        "needs_full_refresh"
    } else {
        "failed"
    };
    record::autonomous::record_failure(
        &RunRecord {
            target: target.to_string(),
            owner: caller.name.clone(),
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
        },
        state,
    );
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
    if !catalog::delete_spec(&qualified, &catalog::caller())? {
        return Err(LakeError::NotSynced(qualified));
    }
    if drop_data && catalog::relation_oid(&qualified)?.is_some() {
        Spi::run(&format!("DROP TABLE {qualified}"))
            .map_err(|e| LakeError::Internal(format!("cannot drop {qualified}: {e}")))?;
    }
    Ok(true)
}
