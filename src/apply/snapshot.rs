//! SNAPSHOT apply in place: load a new target, or replace the target's contents with the
//! source's rows row by row, in the caller's transaction. (Most replaces swap in a new table
//! instead: see `swap`; this is the path where a swap would skip something.)
//!
//! The old rows are deleted and the new ones COPYed in the same transaction, so readers keep
//! seeing the old contents (MVCC, no lock stronger than ROW EXCLUSIVE) until it commits, and
//! then the new — never an empty or partial table. Indexes, grants and constraints are untouched.

use super::copy::copy_from_stream;
use crate::error::{LakeError, Result};
use crate::plan::target::{quote_ident, TargetName};
use crate::plan::ColumnsPlan;
use crate::source::scan::ScanStream;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

#[derive(Debug, Default, Clone, Copy)]
pub struct LoadResult {
    pub inserted: u64,
    pub deleted: u64,
    /// Rows left out because their primary key holds a NULL.
    pub skipped_null_key: u64,
    /// Older rows of a key that timeseries_key replaced with a newer one.
    pub superseded: u64,
}

/// Deletes every row of the target (readers keep seeing them until commit); returns how many.
pub fn clear(target: &TargetName) -> Result<u64> {
    spi_count(&format!("DELETE FROM {}", target.qualified()))
}

/// How a load meets the rows already in the target.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Into {
    /// A table new in this transaction, empty: COPY writes frozen rows where it may.
    New,
    /// Add to the rows there (none, or already deleted).
    Append,
    /// Delete the rows there first (readers see them until commit).
    Replace,
}

pub fn load(
    target: &TargetName,
    relid: pg_sys::Oid,
    plan: &ColumnsPlan,
    stream: ScanStream,
    into: Into,
) -> Result<LoadResult> {
    let mut result = LoadResult::default();
    if into == Into::Replace {
        result.deleted = clear(target)?;
    }
    let names: Vec<String> = plan.columns.iter().map(|c| c.name.clone()).collect();
    match plan.timeseries {
        None => {
            let (n, stats) = catching_duplicates(target, plan, || {
                if into != Into::New {
                    return copy_from_stream(relid, &names, stream);
                }
                // A new file in COPY's own subtransaction lets it freeze (an empty table:
                // nothing to copy over).
                let fresh = || unsafe {
                    if !super::copy::freeze_allowed() {
                        return (relid, false);
                    }
                    let rel = pgrx::PgRelation::open(relid);
                    pg_sys::RelationSetNewRelfilenode(
                        rel.as_ptr(),
                        (*(*rel.as_ptr()).rd_rel).relpersistence,
                    );
                    (relid, true)
                };
                super::copy::copy_into_fresh(&target.qualified(), &names, stream, fresh)
                    .map(|(_, n, stats)| (n, stats))
            })?;
            result.inserted = n;
            result.skipped_null_key = stats.skipped_null_key;
        }
        Some(ts) => {
            // Several rows per key: stage them all, keep the latest of each key.
            let stage = "pg_temp.lakesync_stage";
            let cols: Vec<String> = names.iter().map(|n| quote_ident(n)).collect();
            let key: Vec<String> = plan.key.iter().map(|&k| cols[k].clone()).collect();
            spi_count(&format!("DROP TABLE IF EXISTS {stage}"))?;
            // Only the synced columns: a user's own columns (identity, volatile defaults,
            // NOT NULL) have no business in the stage.
            spi_count(&format!(
                "CREATE TEMP TABLE lakesync_stage AS SELECT {} FROM {} WITH NO DATA",
                cols.join(", "),
                target.qualified()
            ))?;
            let stage_oid = crate::catalog::relation_oid(stage)?
                .ok_or_else(|| LakeError::Internal("staging table is not visible".into()))?;
            let (staged, stats) = copy_from_stream(stage_oid, &names, stream)?;
            result.inserted = spi_count(&format!(
                "INSERT INTO {target} ({cols}) SELECT DISTINCT ON ({key}) {cols} FROM {stage} \
                 ORDER BY {key}, {ts} DESC NULLS LAST",
                target = target.qualified(),
                cols = cols.join(", "),
                key = key.join(", "),
                ts = cols[ts],
            ))?;
            spi_count(&format!("DROP TABLE {stage}"))?;
            result.skipped_null_key = stats.skipped_null_key;
            result.superseded = staged - result.inserted;
        }
    }
    Ok(result)
}

fn spi_count(sql: &str) -> Result<u64> {
    Spi::connect_mut(|c| c.update(sql, None, &[]).map(|t| t.len() as u64))
        .map_err(|e| LakeError::Internal(format!("{sql}: {e}")))
}

/// A unique violation of the primary key while loading or indexing means the source repeats a
/// key: say so in our words, naming the key, with the hint that fixes it. A unique index of the
/// user's own (on other columns) is theirs to explain: its ERROR goes on as it is. The work runs
/// in a subtransaction, so the caught ERROR is rolled back before anything else runs.
pub fn catching_duplicates<T>(
    target: &TargetName,
    plan: &ColumnsPlan,
    f: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let target_name = target.qualified();
    // As Postgres prints an index's columns in "Key (a, b)=(…)".
    let key_columns: Vec<String> = plan
        .key
        .iter()
        .map(|&k| quote_ident(&plan.columns[k].name))
        .collect();
    let key_prefix = format!("Key ({})=", key_columns.join(", "));
    match crate::subxact::run(true, f) {
        Ok(r) => r,
        Err(e)
            if crate::subxact::sqlstate(&e) == PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION
                && detail_of(&e).starts_with(&key_prefix) =>
        {
            let detail = detail_of(&e);
            // "Key (id)=(5) already exists." (insert) or "Key (id)=(5) is duplicated." (index)
            let key = detail
                .strip_prefix("Key ")
                .and_then(|s| {
                    s.strip_suffix(" already exists.")
                        .or_else(|| s.strip_suffix(" is duplicated."))
                })
                .unwrap_or(&detail)
                .to_string();
            Err(LakeError::DuplicateKey {
                target: target_name,
                key,
            })
        }
        Err(e) => e.rethrow(),
    }
}

fn detail_of(e: &pgrx::pg_sys::panic::CaughtError) -> String {
    match e {
        pgrx::pg_sys::panic::CaughtError::PostgresError(r)
        | pgrx::pg_sys::panic::CaughtError::ErrorReport(r) => r.detail().unwrap_or("").to_string(),
        _ => String::new(),
    }
}
