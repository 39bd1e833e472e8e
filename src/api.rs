//! The SQL functions: thin wrappers that parse arguments, call the sync pipeline and turn its
//! errors into Postgres ERRORs.

use crate::error::OrRaise;
use crate::sync::{self, NewSyncedTable, SyncReport};
use pgrx::datum::Interval;
use pgrx::prelude::*;
use pgrx::JsonB;

#[allow(clippy::type_complexity)]
fn row(
    r: SyncReport,
) -> TableIterator<
    'static,
    (
        name!(target, String),
        name!(source, String),
        name!(mode, String),
        name!(delta_version, i64),
        name!(rows_loaded, i64),
        name!(rows_skipped, i64),
        name!(duration, Interval),
        name!(message, String),
        name!(from_version, Option<i64>),
        name!(rows_inserted, i64),
        name!(rows_updated, i64),
        name!(rows_deleted, i64),
        name!(change_source, String),
    ),
> {
    let micros = i64::try_from(r.duration.as_micros()).unwrap_or(i64::MAX);
    TableIterator::once((
        r.target,
        r.source,
        r.mode,
        r.delta_version,
        r.inserted + r.updated,
        r.skipped,
        Interval::from_micros(micros),
        r.message,
        r.from_version,
        r.inserted,
        r.updated,
        r.deleted,
        r.change_source.as_str().to_string(),
    ))
}

/// Creates `target` from the Delta table at `source`, records the spec and runs the first sync.
#[pg_extern(volatile, parallel_unsafe)]
#[allow(clippy::type_complexity)] // the row type is spelled out for the SQL signature
fn create_synced_table(
    target: &str,
    source: &str,
    primary_key: default!(Option<Vec<String>>, "NULL"),
    mode: default!(&str, "'snapshot'"),
    options: default!(JsonB, "'{}'"),
) -> TableIterator<
    'static,
    (
        name!(target, String),
        name!(source, String),
        name!(mode, String),
        name!(delta_version, i64),
        name!(rows_loaded, i64),
        name!(rows_skipped, i64),
        name!(duration, Interval),
        name!(message, String),
        name!(from_version, Option<i64>),
        name!(rows_inserted, i64),
        name!(rows_updated, i64),
        name!(rows_deleted, i64),
        name!(change_source, String),
    ),
> {
    row(sync::create(NewSyncedTable {
        target,
        source,
        primary_key: primary_key.unwrap_or_default(),
        mode,
        options: options.0,
    })
    .or_raise())
}

/// Syncs `target` now, in this backend and transaction. A dry run reports what the sync would
/// do and changes nothing.
#[pg_extern(volatile, parallel_unsafe)]
#[allow(clippy::type_complexity)]
fn sync_now(
    target: &str,
    dry_run: default!(bool, "false"),
) -> TableIterator<
    'static,
    (
        name!(target, String),
        name!(source, String),
        name!(mode, String),
        name!(delta_version, i64),
        name!(rows_loaded, i64),
        name!(rows_skipped, i64),
        name!(duration, Interval),
        name!(message, String),
        name!(from_version, Option<i64>),
        name!(rows_inserted, i64),
        name!(rows_updated, i64),
        name!(rows_deleted, i64),
        name!(change_source, String),
    ),
> {
    row(sync::sync_now(target, dry_run).or_raise())
}

/// Rebuilds `target` from the latest Delta version in one transaction (readers see the old
/// contents or the new); the way out of state needs_full_refresh.
#[pg_extern(volatile, parallel_unsafe)]
#[allow(clippy::type_complexity)]
fn full_refresh(
    target: &str,
) -> TableIterator<
    'static,
    (
        name!(target, String),
        name!(source, String),
        name!(mode, String),
        name!(delta_version, i64),
        name!(rows_loaded, i64),
        name!(rows_skipped, i64),
        name!(duration, Interval),
        name!(message, String),
        name!(from_version, Option<i64>),
        name!(rows_inserted, i64),
        name!(rows_updated, i64),
        name!(rows_deleted, i64),
        name!(change_source, String),
    ),
> {
    row(sync::full_refresh(target).or_raise())
}

/// Forgets the spec of `target`; drops the table too when `drop_data`.
#[pg_extern(volatile, parallel_unsafe)]
fn drop_synced_table(target: &str, drop_data: default!(bool, "false")) -> bool {
    sync::drop(target, drop_data).or_raise()
}

/// Stops the background worker's syncs of `target` (scheduled, continuous, retries) until
/// `resume_sync`; `sync_now` still works.
#[pg_extern(volatile, parallel_unsafe)]
fn pause_sync(target: &str) -> bool {
    sync::set_paused(target, true).or_raise()
}

/// Lets the background worker sync `target` again.
#[pg_extern(volatile, parallel_unsafe)]
fn resume_sync(target: &str) -> bool {
    sync::set_paused(target, false).or_raise()
}

/// Changes the mode and/or the options of `target` without re-creating it (NULL keeps them).
#[pg_extern(volatile, parallel_unsafe)]
fn alter_synced_table(
    target: &str,
    mode: default!(Option<&str>, "NULL"),
    options: default!(Option<JsonB>, "NULL"),
) -> bool {
    sync::alter(target, mode, options.map(|o| o.0)).or_raise()
}

/// Stores a credential for object-store sources, owned by the current role; `options` are the
/// provider's object_store keys (secret ones are never shown again).
#[pg_extern(volatile, parallel_unsafe)]
fn create_credential(name: &str, provider: &str, options: default!(JsonB, "'{}'")) -> bool {
    crate::credentials::create(name, provider, &options.0).or_raise();
    true
}

/// Changes options of a credential of the current role (a JSON null removes one); synced
/// tables naming it use the new ones from their next sync.
#[pg_extern(volatile, parallel_unsafe)]
fn alter_credential(name: &str, options: JsonB) -> bool {
    crate::credentials::alter(name, &options.0).or_raise();
    true
}

/// Drops a credential of the current role, refused while one of its synced tables names it.
#[pg_extern(volatile, parallel_unsafe)]
fn drop_credential(name: &str, if_exists: default!(bool, "false")) -> bool {
    crate::credentials::drop(name, if_exists).or_raise()
}
