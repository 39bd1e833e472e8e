//! Execute: carry out a decision in the current transaction — load a snapshot or apply the
//! steps — and record the success (run row and spec state) with the data, so both commit
//! together or not at all.

use super::decide::{Cheaper, Decision};
use super::report::{ChangeSource, Counts, SyncReport};
use super::steps::{self, Step};
use crate::apply;
use crate::apply::changes::Applied;
use crate::catalog::{self, RowCount, SyncedState};
use crate::error::Result;
use crate::options::{Mode, OnGap, SyncOptions};
use crate::plan::evolve::Change;
use crate::plan::target::TargetName;
use crate::plan::ColumnsPlan;
use crate::record::{self, RunRecord};
use crate::source::{changes, scan, DeltaSource};
use pgrx::datum::TimestampWithTimeZone;
use pgrx::prelude::*;
use std::cell::Cell;
use std::time::Instant;

/// One sync's context, shared by its steps.
pub struct Run<'a> {
    pub target: &'a TargetName,
    /// The role the run belongs to: the spec's owner (also when a superuser syncs it), so that
    /// row security shows the owner its runs.
    pub owner: &'a str,
    pub relid: pg_sys::Oid,
    pub mode: Mode,
    pub opts: &'a SyncOptions,
    pub started: TimestampWithTimeZone,
    pub clock: Instant,
    /// How the target's columns must change to hold the source's schema.
    pub schema: Vec<Change>,
    /// The target columns the sync writes (the plan's).
    pub columns: Vec<String>,
    evolved: Cell<bool>,
}

impl<'a> Run<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        target: &'a TargetName,
        owner: &'a str,
        relid: pg_sys::Oid,
        mode: Mode,
        opts: &'a SyncOptions,
        (started, clock): (TimestampWithTimeZone, Instant),
        schema: Vec<Change>,
        plan: &ColumnsPlan,
    ) -> Self {
        Run {
            target,
            owner,
            relid,
            mode,
            opts,
            started,
            clock,
            schema,
            columns: plan.columns.iter().map(|c| c.name.clone()).collect(),
            evolved: Cell::new(false),
        }
    }

    /// Applies the schema changes to the target, once.
    fn evolve(&self) -> Result<()> {
        if !self.evolved.replace(true) {
            apply::ddl::evolve(self.target, &self.schema)?;
        }
        Ok(())
    }
}

/// How a snapshot load meets the target.
#[derive(Clone, Copy)]
pub enum Load<'a> {
    /// A target created in this transaction: no rows to replace, its key's index is built
    /// after the rows are in. The spec's options and key, for the workers of a parallel load.
    First {
        options: &'a serde_json::Value,
        primary_key: &'a [String],
    },
    /// Replace the rows of an existing target; `why` says why a table that could have been
    /// synced incrementally was reloaded in full.
    Replace {
        from_version: Option<i64>,
        why: Option<&'a str>,
    },
}

/// Carries out `decision` for an existing synced table last synced at `synced_version`.
pub fn execute(
    run: &Run,
    source: DeltaSource,
    plan: &ColumnsPlan,
    synced_version: Option<i64>,
    decision: Decision,
) -> Result<SyncReport> {
    if matches!(
        decision,
        Decision::Snapshot { .. } | Decision::Incremental { .. } | Decision::SnapshotOrDiff { .. }
    ) {
        apply::copy::refuse_row_security(run.relid);
    }
    match decision {
        Decision::Fail(e) => Err(e),
        Decision::Nothing => {
            // Checked, and current: a schedule counts from this sync too.
            catalog::mark_checked(&run.target.qualified(), run.started)?;
            let version = source.version();
            Ok(SyncReport {
                target: run.target.qualified(),
                source: source.location.display(),
                mode: run.mode.as_str().into(),
                change_source: ChangeSource::None,
                from_version: synced_version,
                delta_version: version,
                inserted: 0,
                updated: 0,
                deleted: 0,
                skipped: 0,
                duration: run.clock.elapsed(),
                message: format!("already at Delta version {version}; nothing to do"),
            })
        }
        Decision::Snapshot { why } => load_snapshot(
            run,
            source,
            plan,
            Load::Replace {
                from_version: synced_version,
                why: why.as_deref(),
            },
        ),
        Decision::SnapshotOrDiff { synced } => {
            // Only the files that changed, when they are few; else a full read.
            let detection = crate::options::ChangeDetection::Files;
            let full = |source| {
                let load = Load::Replace {
                    from_version: synced_version,
                    why: None,
                };
                load_snapshot(run, source, plan, load)
            };
            if cheaper(run, &source, plan, synced, detection)? != Cheaper::Changes {
                return full(source);
            }
            match steps::build(&source, plan, synced, detection, run.opts.null_bytes) {
                Ok(steps) => apply_changes(run, source, plan, synced, detection, steps),
                // Whatever keeps the diff from being read, a full read gets past it.
                Err(_) => full(source),
            }
        }
        Decision::Incremental { synced } => {
            let detection = run.opts.change_detection;
            if let Cheaper::Full(why) = cheaper(run, &source, plan, synced, detection)? {
                return load_snapshot(
                    run,
                    source,
                    plan,
                    Load::Replace {
                        from_version: Some(synced),
                        why: Some(&why),
                    },
                );
            }
            let built = steps::build(&source, plan, synced, detection, run.opts.null_bytes);
            match built {
                Ok(steps) => apply_changes(run, source, plan, synced, detection, steps),
                Err(gap) if gap.needs_full_refresh() && run.opts.on_gap == OnGap::FullRefresh => {
                    let why = gap.to_string();
                    load_snapshot(
                        run,
                        source,
                        plan,
                        Load::Replace {
                            from_version: Some(synced),
                            why: Some(&why),
                        },
                    )
                }
                Err(e) => Err(e),
            }
        }
    }
}

/// Applies the steps after adding and widening columns. A gap found while reading (a vacuumed
/// file, say) is handled like one found before, per option on_gap.
fn apply_changes(
    run: &Run,
    source: DeltaSource,
    plan: &ColumnsPlan,
    synced: i64,
    detection: crate::options::ChangeDetection,
    steps: Vec<Step>,
) -> Result<SyncReport> {
    let change_source = match detection {
        crate::options::ChangeDetection::Cdf => ChangeSource::Cdf,
        crate::options::ChangeDetection::Files => ChangeSource::Files,
    };
    let reload = |why: &str| {
        load_snapshot(
            run,
            source.clone(),
            plan,
            Load::Replace {
                from_version: Some(synced),
                why: Some(why),
            },
        )
    };
    // On the board for the whole apply (a reload below is the same sync: it stays on it).
    let _on_board = record::board::sync_started(run.relid, source.version());
    let _writing = apply::guard::writing(run.relid);
    run.evolve()?;
    // A SNAPSHOT table applying changed files falls back to the full read it would have made.
    let may_reload = run.opts.on_gap == OnGap::FullRefresh || run.mode == Mode::Snapshot;
    let mut total = Counts::default();
    for step in steps {
        let (plan_of_step, parts) = (step.plan, step.parts);
        let applied = crate::subxact::run(true, || {
            apply::changes::apply(run.target, &plan_of_step, parts)
        });
        let applied = match applied {
            Ok(Err(e)) if may_reload && e.needs_full_refresh() => {
                return reload(&e.to_string());
            }
            Ok(r) => r?,
            Err(caught) if may_reload && crate::subxact::needs_full_refresh(&caught) => {
                return reload(&crate::subxact::message(&caught));
            }
            Err(caught) => caught.rethrow(),
        };
        match applied {
            Applied::NeedsSnapshot => {
                return reload("timeseries_key with deletes or updates in the changes")
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

/// Whether applying the changes after `synced` or reading the whole table is cheaper: the change
/// files' share of the table's bytes (from the log, before any data is read) against the
/// crossover of the full refresh this table would get (swap or in place), or the option's.
fn cheaper(
    run: &Run,
    source: &DeltaSource,
    plan: &ColumnsPlan,
    synced: i64,
    detection: crate::options::ChangeDetection,
) -> Result<Cheaper> {
    use super::decide::{CROSSOVER_IN_PLACE, CROSSOVER_SWAP};
    use crate::options::Crossover;
    let (threshold, explicit) = match run.opts.full_refresh_above {
        // Never switch: incremental syncs apply changes, SNAPSHOT re-syncs read everything.
        Crossover::Never if run.mode == Mode::Snapshot => {
            return Ok(Cheaper::Full("option full_refresh_above is false".into()))
        }
        Crossover::Never => return Ok(Cheaper::Changes),
        Crossover::Above(x) => (x, true),
        // A full refresh resets what applications wrote (read_only: false) and their own
        // columns, which applying changes keeps: by itself, never there.
        Crossover::Measured
            if run.mode != Mode::Snapshot
                && (!run.opts.read_only || has_own_columns(run.relid, &run.columns)?) =>
        {
            return Ok(Cheaper::Changes)
        }
        Crossover::Measured => {
            let swaps =
                run.schema.is_empty() && apply::swap::why_in_place(run.relid, plan)?.is_none();
            (
                if swaps {
                    CROSSOVER_SWAP
                } else {
                    CROSSOVER_IN_PLACE
                },
                false,
            )
        }
    };
    let src = source.clone();
    let sizes =
        crate::offload::run(move || Ok(crate::source::estimate::sizes(&src, synced, detection)))?;
    Ok(super::decide::cheaper(sizes, threshold, explicit))
}

/// Whether the table has columns of its own (not written by the sync).
fn has_own_columns(relid: pg_sys::Oid, synced: &[String]) -> Result<bool> {
    Spi::get_one_with_args::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a \
           WHERE a.attrelid OPERATOR(pg_catalog.=) $1 AND a.attnum OPERATOR(pg_catalog.>) 0 \
             AND NOT a.attisdropped AND NOT a.attname OPERATOR(pg_catalog.=) ANY ($2::pg_catalog.name[]))",
        &[relid.into(), synced.to_vec().into()],
    )
    .map(|b| b.unwrap_or(true))
    .map_err(|e| crate::error::LakeError::Internal(format!("cannot read the table's columns: {e}")))
}

/// Replaces the target's contents with the source's rows (the first sync, SNAPSHOT mode, and
/// every full refresh).
pub fn load_snapshot(
    run: &Run,
    source: DeltaSource,
    plan: &ColumnsPlan,
    load: Load,
) -> Result<SyncReport> {
    let (from_version, why, replace_existing) = match load {
        Load::First { .. } => (None, None, false),
        Load::Replace { from_version, why } => (from_version, why, true),
    };
    let _writing = apply::guard::writing(run.relid);
    // A replace builds a new table and swaps it in where that skips nothing a row-by-row
    // replace would do (see apply::swap); else it replaces the rows in place.
    let in_place = match (replace_existing, run.schema.is_empty()) {
        (false, _) => None,
        (true, false) => Some("the columns change".to_string()),
        (true, true) => apply::swap::why_in_place(run.relid, plan)?,
    };
    // A type change or a dropped column is applied after the old rows are gone.
    let cleared = if replace_existing && run.schema.iter().any(|c| !c.keeps_data()) {
        Some(apply::snapshot::clear(run.target)?)
    } else {
        None
    };
    run.evolve()?;
    let _on_board = record::board::sync_started(run.relid, source.version());
    let meta = source.clone();
    let stream = || {
        scan::start(
            source,
            plan.columns.clone(),
            plan.key.clone(),
            run.opts.null_bytes,
        )
    };
    let into = match (replace_existing, cleared.is_some()) {
        (false, _) => apply::snapshot::Into::New,
        (true, true) => apply::snapshot::Into::Append,
        (true, false) => apply::snapshot::Into::Replace,
    };
    // A first load shared among workers, where the option asks for it and it can be done.
    let shared = match load {
        Load::First {
            options,
            primary_key,
        } if run.opts.load_workers > 1 => {
            let req = apply::parallel::Request {
                owner: run.owner,
                credential: run.opts.credential.as_deref(),
                options,
                primary_key,
                workers: run.opts.load_workers,
            };
            apply::parallel::load(run.target, run.relid, plan, &meta, &req)?
        }
        _ => None,
    };
    let loaded = if let Some(loaded) = shared {
        loaded
    } else if replace_existing && in_place.is_none() {
        // Only syncs write a read-only table: the catalog's count is exact.
        let old_rows = match run.opts.read_only {
            true => catalog::synced_rows(&run.target.qualified())?,
            false => None,
        };
        apply::swap::load(run.target, run.relid, plan, stream(), old_rows)?
    } else {
        apply::snapshot::load(run.target, run.relid, plan, stream(), into)?
    };
    if let Some(reason) = &in_place {
        pgrx::debug1!(
            "pg_lakesync: {} replaced in place, not swapped: {reason}",
            run.target.qualified()
        );
    }
    if !replace_existing {
        // A new target: its key's index is built once the rows are in (see create_target).
        apply::ddl::add_primary_key(run.target, plan)?;
    }
    record_success(
        run,
        &meta,
        from_version,
        ChangeSource::Snapshot,
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
    change_source: ChangeSource,
    c: Counts,
    why: Option<&str>,
) -> Result<SyncReport> {
    let qualified = run.target.qualified();
    let version = source.version();
    let mut message = match change_source {
        ChangeSource::Snapshot => format!("synced Delta version {version}: {} rows", c.inserted),
        // A retry after a failure at the synced version: the state is set right, nothing read.
        _ if from_version == Some(version) => {
            format!("already at Delta version {version}; nothing to do")
        }
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
        owner: run.owner.to_string(),
        started: run.started,
        from_version,
        to_version: Some(version),
        inserted: c.inserted,
        updated: c.updated,
        deleted: c.deleted,
        skipped: c.skipped,
        change_source: Some(change_source.as_str().into()),
        succeeded: true,
        message: Some(message.clone()),
        credential: record::credential_in_use(),
    })?;
    catalog::mark_synced(
        &qualified,
        &SyncedState {
            version,
            table_id: changes::table_id(source),
            rows: match change_source {
                ChangeSource::Snapshot => RowCount::Exactly(c.inserted),
                _ => RowCount::ChangedBy(c.inserted - c.deleted),
            },
            started: run.started,
            columns: run.columns.clone(),
            relid: run.relid,
        },
    )?;
    record::notify_synced(&record::SyncNotice {
        target: &qualified,
        from_version,
        to_version: version,
        inserted: c.inserted,
        updated: c.updated,
        deleted: c.deleted,
    })?;
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
