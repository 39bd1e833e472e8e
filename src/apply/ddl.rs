//! The target table a new synced table gets: the Delta columns with their mapped types and the
//! primary key constraint.

use crate::error::{LakeError, Result};
use crate::plan::evolve::Change;
use crate::plan::target::{quote_ident, TargetName};
use crate::plan::ColumnsPlan;
use pgrx::prelude::*;

/// Creates the target without its primary key: the first load is faster when the key's index
/// is built once, sorted, after the rows are in (`add_primary_key`) — the table is new in this
/// transaction, so nobody else can see it missing.
pub fn create_target(target: &TargetName, plan: &ColumnsPlan) -> Result<pg_sys::Oid> {
    let run = |sql: &str| {
        Spi::run(sql)
            .map_err(|e| LakeError::Internal(format!("cannot create the target table: {e}")))
    };
    // CREATE SCHEMA IF NOT EXISTS needs CREATE on the database even when the schema exists.
    let schema_exists = Spi::get_one_with_args::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1)",
        &[target.schema.as_str().into()],
    )
    .map_err(|e| LakeError::Internal(format!("cannot look up schema: {e}")))?
    .unwrap_or(false);
    if !schema_exists {
        run(&format!("CREATE SCHEMA {}", quote_ident(&target.schema)))?;
    }
    run(&format!(
        "CREATE TABLE {} ({})",
        target.qualified(),
        column_defs(plan)
    ))?;
    crate::catalog::relation_oid(&target.qualified())?
        .ok_or_else(|| LakeError::Internal("the new target table is not visible".into()))
}

/// The target's columns as CREATE TABLE lists them: name and type, in the plan's order.
pub fn column_defs(plan: &ColumnsPlan) -> String {
    let cols: Vec<String> = plan
        .columns
        .iter()
        .map(|c| format!("{} {}", quote_ident(&c.name), c.pg.sql()))
        .collect();
    cols.join(", ")
}

/// Adds the primary key to a target `create_target` made; a repeated key in the loaded rows
/// fails like a repeated key during a load.
pub fn add_primary_key(target: &TargetName, plan: &ColumnsPlan) -> Result<()> {
    if plan.key.is_empty() {
        return Ok(());
    }
    let key: Vec<String> = plan
        .key
        .iter()
        .map(|&k| quote_ident(&plan.columns[k].name))
        .collect();
    let sql = format!(
        "ALTER TABLE {} ADD PRIMARY KEY ({})",
        target.qualified(),
        key.join(", ")
    );
    super::snapshot::catching_duplicates(target, plan, || {
        Spi::run(&sql).map_err(|e| LakeError::Internal(format!("{sql}: {e}")))
    })
}

/// Changes the target's columns to match the Delta schema. Type changes that are not widenings
/// and drops only ever run in a full refresh, after the old rows are deleted, so a cast to the
/// new type has no rows to convert.
pub fn evolve(target: &TargetName, changes: &[Change]) -> Result<()> {
    let t = target.qualified();
    for change in changes {
        let sql = match change {
            Change::Add(c) => format!(
                "ALTER TABLE {t} ADD COLUMN {} {}",
                quote_ident(&c.name),
                c.pg.sql()
            ),
            Change::Widen { column: c, .. } => {
                let (n, ty) = (quote_ident(&c.name), c.pg.sql());
                format!("ALTER TABLE {t} ALTER COLUMN {n} TYPE {ty} USING {n}::{ty}")
            }
            Change::Retype { column: c, .. } => {
                let (n, ty) = (quote_ident(&c.name), c.pg.sql());
                format!("ALTER TABLE {t} ALTER COLUMN {n} TYPE {ty} USING NULL::{ty}")
            }
            Change::Drop(name) => format!("ALTER TABLE {t} DROP COLUMN {}", quote_ident(name)),
        };
        Spi::run(&sql).map_err(|e| {
            LakeError::Internal(format!("cannot change the schema of {t} ({sql}): {e}"))
        })?;
    }
    Ok(())
}
