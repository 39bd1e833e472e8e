//! TRIGGERED apply: merge a range of Delta changes into the target, in the caller's transaction.
//!
//! The changes are COPYed into a temporary staging table, reduced to the last change of each
//! key, and applied with one DELETE and one INSERT … ON CONFLICT DO UPDATE — the set-based path
//! an expert would write by hand, so the target is touched once per changed key.

use super::copy::copy_from_stream;
use crate::debug::pause_point;
use crate::error::{LakeError, Result};
use crate::plan::target::{quote_ident, TargetName};
use crate::plan::ColumnsPlan;
use crate::source::changes::{CHANGE_TYPE, COMMIT_VERSION};
use crate::source::scan::ScanStream;
use pgrx::prelude::*;

const STAGE: &str = "pg_temp.lakesync_changes";
/// The change types after which the row's key no longer holds that row.
const GONE: &str = "('delete', 'update_preimage')";

#[derive(Debug, Default, Clone, Copy)]
pub struct ChangeCounts {
    pub inserted: u64,
    pub updated: u64,
    pub deleted: u64,
    pub skipped_null_key: u64,
}

pub enum Applied {
    Changes(ChangeCounts),
    /// With timeseries_key, a delete or update can make an older row of a key the latest one,
    /// which only the whole table knows: the caller reloads a snapshot instead.
    NeedsSnapshot,
}

struct Sql {
    target: String,
    cols: Vec<String>,
    key: Vec<String>,
    timeseries: Option<String>,
}

impl Sql {
    fn new(target: &TargetName, plan: &ColumnsPlan) -> Self {
        let cols: Vec<String> = plan.columns.iter().map(|c| quote_ident(&c.name)).collect();
        let key = plan.key.iter().map(|&k| cols[k].clone()).collect();
        let timeseries = plan.timeseries.map(|t| cols[t].clone());
        Sql {
            target: target.qualified(),
            cols,
            key,
            timeseries,
        }
    }

    fn key_list(&self, alias: &str) -> String {
        self.key
            .iter()
            .map(|k| format!("{alias}{k}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn key_join(&self, a: &str, b: &str) -> String {
        self.key
            .iter()
            .map(|k| format!("{a}.{k} = {b}.{k}"))
            .collect::<Vec<_>>()
            .join(" AND ")
    }
}

/// Change rows for the staging table: `columns` (a subset of the synced ones, in the stream's
/// order) followed by change type and version. Started only when its turn comes.
pub struct StagePart {
    pub columns: Vec<String>,
    pub stream: Box<dyn FnOnce() -> ScanStream>,
}

impl StagePart {
    /// A part carrying every synced column.
    pub fn all(plan: &ColumnsPlan, stream: impl FnOnce() -> ScanStream + 'static) -> Self {
        StagePart {
            columns: plan.columns.iter().map(|c| c.name.clone()).collect(),
            stream: Box::new(stream),
        }
    }
}

/// Stages `parts` and applies them to `target`.
pub fn apply(target: &TargetName, plan: &ColumnsPlan, parts: Vec<StagePart>) -> Result<Applied> {
    let sql = Sql::new(target, plan);
    let change_type = quote_ident(CHANGE_TYPE);
    let version = quote_ident(COMMIT_VERSION);

    spi(&format!("DROP TABLE IF EXISTS {STAGE}"))?;
    spi(&format!(
        "CREATE TEMP TABLE lakesync_changes ON COMMIT DROP AS \
         SELECT {cols}, NULL::pg_catalog.text AS {change_type}, NULL::bigint AS {version} \
         FROM {target} WITH NO DATA",
        cols = sql.cols.join(", "),
        target = sql.target,
    ))?;
    let stage_oid = crate::catalog::relation_oid(STAGE)?
        .ok_or_else(|| LakeError::Internal("staging table is not visible".into()))?;
    let mut skipped_null_key = 0;
    for part in parts {
        let mut names = part.columns;
        names.push(CHANGE_TYPE.into());
        names.push(COMMIT_VERSION.into());
        let t = std::time::Instant::now();
        let (staged, stats) = copy_from_stream(stage_oid, &names, (part.stream)())?;
        pgrx::debug1!(
            "pg_lakesync: {} ms, {staged} rows: staged changes",
            t.elapsed().as_millis()
        );
        skipped_null_key += stats.skipped_null_key;
    }

    if sql.timeseries.is_some()
        && exists(&format!(
            "SELECT 1 FROM {STAGE} WHERE {change_type} IN ('delete', 'update_postimage')"
        ))?
    {
        spi(&format!("DROP TABLE {STAGE}"))?;
        return Ok(Applied::NeedsSnapshot);
    }
    // The last change of each key wins: latest commit first; within one commit a row that
    // exists afterwards (insert, update post-image) wins over a row that is gone (delete, update
    // pre-image). Without timeseries_key that decides (two rows that exist afterwards are an
    // error, and gone rows all delete alike); with it only inserts are staged, and among inserts
    // of one key at one time the later in the feed wins, which is the staging table's physical
    // order (new in this transaction, only appended to). A pre-image counts as a delete so an
    // update that changes the primary key removes the old key.
    let order = match &sql.timeseries {
        None => format!("{version} DESC, ({change_type} IN {GONE}), s.ctid DESC"),
        Some(ts) => format!("{ts} DESC NULLS LAST, {version} DESC, s.ctid DESC"),
    };
    // Without timeseries_key a key holds one row: two rows of one key written by one commit
    // mean the source repeats the key, which a snapshot would refuse too. In the ranking's
    // order such rows are neighbours, so the same sort finds them.
    let repeat = match &sql.timeseries {
        None => format!(
            "({change_type} NOT IN {GONE} AND pg_catalog.lag({change_type} NOT IN {GONE}) OVER w \
             AND pg_catalog.lag({version}) OVER w OPERATOR(pg_catalog.=) {version})"
        ),
        Some(_) => "false".into(),
    };
    let non_key: Vec<&String> = sql.cols.iter().filter(|c| !sql.key.contains(c)).collect();
    let on_conflict = if non_key.is_empty() {
        "DO NOTHING".to_string()
    } else {
        let set = non_key
            .iter()
            .map(|c| format!("{c} = EXCLUDED.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        match &sql.timeseries {
            None => format!("DO UPDATE SET {set}"),
            // Only a newer row replaces the one a key holds.
            Some(ts) => format!(
                "DO UPDATE SET {set} WHERE EXCLUDED.{ts} IS NOT NULL \
                 AND (t.{ts} IS NULL OR EXCLUDED.{ts} >= t.{ts})"
            ),
        }
    };
    // One statement: the net change of each key (sorted by key, so the target's index is
    // walked in order), the deletes and the upserts. A key is in one of the two, never both.
    // Nothing is written when the source repeats a key; the statement returns the key instead.
    let values = sql
        .key
        .iter()
        .map(|k| format!("{k}::pg_catalog.text"))
        .collect::<Vec<_>>()
        .join(", ");
    let merge = format!(
        "WITH net AS MATERIALIZED ( \
             SELECT * FROM (SELECT s.*, pg_catalog.row_number() OVER w AS lakesync_rank, \
                                   {repeat} AS lakesync_repeat \
                            FROM {STAGE} s WINDOW w AS (PARTITION BY {key} ORDER BY {order})) r \
             WHERE lakesync_rank OPERATOR(pg_catalog.=) 1 OR lakesync_repeat), \
              repeated AS (SELECT pg_catalog.format('(%s)=(%s)', $1::pg_catalog.text, \
                                  pg_catalog.concat_ws(', ', {values})) AS key \
                           FROM net WHERE lakesync_repeat LIMIT 1), \
              del AS (DELETE FROM {target} t USING net n \
                      WHERE n.lakesync_rank OPERATOR(pg_catalog.=) 1 AND n.{change_type} IN {GONE} AND {join} \
                        AND NOT EXISTS (SELECT FROM repeated) RETURNING 1), \
              up AS (INSERT INTO {target} AS t ({cols}) \
                     SELECT {cols} FROM net WHERE lakesync_rank OPERATOR(pg_catalog.=) 1 \
                       AND {change_type} NOT IN {GONE} AND NOT EXISTS (SELECT FROM repeated) \
                     ON CONFLICT ({key}) {on_conflict} RETURNING (xmax = 0) AS fresh) \
         SELECT (SELECT pg_catalog.count(*) FROM del), pg_catalog.count(*) FILTER (WHERE fresh), \
                pg_catalog.count(*) FILTER (WHERE NOT fresh), (SELECT key FROM repeated) FROM up",
        key = sql.key_list(""),
        target = sql.target,
        join = sql.key_join("t", "n"),
        cols = sql.cols.join(", "),
    );
    let clock = std::time::Instant::now();
    let names = sql.key.join(", ");
    let (deleted, inserted, updated, repeated) = Spi::connect_mut(|c| {
        let row = c.update(&merge, Some(1), &[names.as_str().into()])?.first();
        Ok::<_, pgrx::spi::Error>((
            row.get::<i64>(1)?.unwrap_or(0),
            row.get::<i64>(2)?.unwrap_or(0),
            row.get::<i64>(3)?.unwrap_or(0),
            row.get::<String>(4)?,
        ))
    })
    .map_err(|e| LakeError::Internal(format!("applying changes to {}: {e}", sql.target)))?;
    pgrx::debug1!("pg_lakesync: {} ms: {merge}", clock.elapsed().as_millis());
    if let Some(key) = repeated {
        return Err(LakeError::DuplicateKey {
            target: target.qualified(),
            key,
        });
    }
    pause_point("apply");
    spi(&format!("DROP TABLE {STAGE}"))?;
    Ok(Applied::Changes(ChangeCounts {
        inserted: inserted as u64,
        updated: updated as u64,
        deleted: deleted as u64,
        skipped_null_key,
    }))
}

fn spi(sql: &str) -> Result<u64> {
    let t = std::time::Instant::now();
    let n = Spi::connect_mut(|c| c.update(sql, None, &[]).map(|t| t.len() as u64))
        .map_err(|e| LakeError::Internal(format!("{sql}: {e}")))?;
    pgrx::debug1!(
        "pg_lakesync: {} ms, {n} rows: {sql}",
        t.elapsed().as_millis()
    );
    Ok(n)
}

fn exists(sql: &str) -> Result<bool> {
    Spi::get_one::<bool>(&format!("SELECT EXISTS ({sql})"))
        .map(|b| b.unwrap_or(false))
        .map_err(|e| LakeError::Internal(format!("{sql}: {e}")))
}
