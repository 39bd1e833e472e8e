//! The specs in `lakesync.synced_tables`. Every statement is schema-qualified and runs as the
//! calling role, so row security limits each role to its own synced tables.

use crate::error::{LakeError, Result};
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::JsonB;

#[derive(Debug, Clone)]
pub struct Spec {
    pub target: String,
    pub source: String,
    pub mode: String,
    pub primary_key: Vec<String>,
    pub options: serde_json::Value,
    pub state: String,
    pub synced_version: Option<i64>,
    /// The Delta table id the synced version belongs to.
    pub delta_table_id: Option<String>,
}

fn spi_err(e: pgrx::spi::Error) -> LakeError {
    LakeError::Internal(format!("catalog access failed: {e}"))
}

pub fn insert_spec(spec: &Spec) -> Result<()> {
    let args: Vec<DatumWithOid> = vec![
        spec.target.clone().into(),
        spec.source.clone().into(),
        spec.mode.clone().into(),
        spec.primary_key.clone().into(),
        JsonB(spec.options.clone()).into(),
    ];
    Spi::run_with_args(
        "INSERT INTO lakesync.synced_tables (target, source, mode, primary_key, options) \
         VALUES ($1, $2, $3, NULLIF($4, '{}'::text[]), $5)",
        &args,
    )
    .map_err(spi_err)
}

/// Loads a spec and locks its row, so two syncs of one table run one after the other.
pub fn lock_spec(target: &str) -> Result<Option<Spec>> {
    Spi::connect_mut(|client| {
        let rows = client.update(
            "SELECT target, source, mode, coalesce(primary_key, '{}'), options, state, synced_version, \
             delta_table_id FROM lakesync.synced_tables WHERE target = $1 FOR UPDATE",
            Some(1),
            &[target.into()],
        )?;
        let mut spec = None;
        for row in rows {
            spec = Some(Spec {
                target: row.get::<String>(1)?.unwrap_or_default(),
                source: row.get::<String>(2)?.unwrap_or_default(),
                mode: row.get::<String>(3)?.unwrap_or_default(),
                primary_key: row.get::<Vec<String>>(4)?.unwrap_or_default(),
                options: row.get::<JsonB>(5)?.map(|j| j.0).unwrap_or(serde_json::Value::Null),
                state: row.get::<String>(6)?.unwrap_or_default(),
                synced_version: row.get::<i64>(7)?,
                delta_table_id: row.get::<String>(8)?,
            });
        }
        Ok::<_, pgrx::spi::Error>(spec)
    })
    .map_err(spi_err)
}

pub fn exists(target: &str) -> Result<bool> {
    Spi::get_one_with_args::<bool>(
        "SELECT EXISTS (SELECT 1 FROM lakesync.synced_tables WHERE target = $1)",
        &[target.into()],
    )
    .map(|b| b.unwrap_or(false))
    .map_err(spi_err)
}

/// Forgets a spec; false when there was none the caller may see.
pub fn delete_spec(target: &str) -> Result<bool> {
    Spi::get_one_with_args::<bool>(
        "WITH d AS (DELETE FROM lakesync.synced_tables WHERE target = $1 RETURNING 1) \
         SELECT count(*) > 0 FROM d",
        &[target.into()],
    )
    .map(|b| b.unwrap_or(false))
    .map_err(spi_err)
}

/// What a finished sync leaves in the spec row.
pub struct SyncedState {
    pub version: i64,
    pub table_id: String,
    /// The table's row count after the sync: exact after a snapshot, a change otherwise.
    pub rows: RowCount,
    pub started: pgrx::datum::TimestampWithTimeZone,
}

pub enum RowCount {
    Exactly(i64),
    ChangedBy(i64),
}

pub fn mark_synced(target: &str, s: &SyncedState) -> Result<()> {
    Spi::run_with_args(
        "UPDATE lakesync.synced_tables SET state = 'synced', synced_version = $2, \
         rows = coalesce($3, rows + $6), \
         last_sync_started = $4, last_sync_finished = clock_timestamp(), last_error = NULL, \
         delta_table_id = $5 WHERE target = $1",
        &[
            target.into(),
            s.version.into(),
            match s.rows {
                RowCount::Exactly(n) => Some(n),
                RowCount::ChangedBy(_) => None,
            }
            .into(),
            s.started.into(),
            s.table_id.clone().into(),
            match s.rows {
                RowCount::Exactly(_) => 0i64,
                RowCount::ChangedBy(d) => d,
            }
            .into(),
        ],
    )
    .map_err(spi_err)
}

/// The schema a bare table name goes to: the first existing schema on the search_path.
pub fn default_schema() -> Result<String> {
    Spi::get_one::<String>("SELECT current_schema()::text")
        .map_err(spi_err)?
        .ok_or_else(|| {
            LakeError::InvalidName(
                "no schema has been selected to create in (the search_path is empty); qualify the target with a schema".into(),
            )
        })
}

/// The oid of an existing relation, if any.
pub fn relation_oid(qualified: &str) -> Result<Option<pg_sys::Oid>> {
    Spi::get_one_with_args::<pg_sys::Oid>("SELECT to_regclass($1)::oid", &[qualified.into()])
        .map_err(spi_err)
}

/// The columns of an existing table, in order: (name, type as format_type prints it).
pub fn table_columns(relid: pg_sys::Oid) -> Result<Vec<(String, String)>> {
    Spi::connect(|client| {
        let rows = client.select(
            "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_catalog.pg_attribute \
             WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            None,
            &[relid.into()],
        )?;
        let mut out = Vec::new();
        for r in rows {
            out.push((
                r.get::<String>(1)?.unwrap_or_default(),
                r.get::<String>(2)?.unwrap_or_default(),
            ));
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .map_err(spi_err)
}
