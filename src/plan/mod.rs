//! Plan: from a Delta schema and a spec, decide the target's columns and key, before anything
//! is written. Every mistake in the spec is found here.

pub mod evolve;
pub mod target;

use crate::error::{LakeError, Result};
use crate::options::SyncOptions;
use crate::source::DeltaSource;
use crate::types::encode::ColumnPlan;
use crate::types::{delta_type_name, pg_type_for};
use delta_kernel::schema::StructType;
use target::MAX_IDENT_BYTES;

#[derive(Debug, Clone)]
pub struct ColumnsPlan {
    pub columns: Vec<ColumnPlan>,
    /// Positions of the primary key columns in `columns`.
    pub key: Vec<usize>,
    /// Position of the timeseries_key column.
    pub timeseries: Option<usize>,
}

pub fn plan_columns(
    delta: &DeltaSource,
    opts: &SyncOptions,
    primary_key: &[String],
) -> Result<ColumnsPlan> {
    let source = &delta.location.display();
    let schema_ref = delta.snapshot.schema();
    let schema: &StructType = &schema_ref;
    let available = || {
        let names: Vec<String> = schema
            .fields()
            .map(|f| format!("\"{}\"", f.name()))
            .collect();
        Some(format!("The Delta table has columns {}.", names.join(", ")))
    };
    let selected: Vec<&str> = match &opts.columns {
        Some(cols) => cols.iter().map(String::as_str).collect(),
        None => schema.fields().map(|f| f.name().as_str()).collect(),
    };
    let mut columns = Vec::with_capacity(selected.len());
    for name in &selected {
        let field = schema
            .field(name)
            .ok_or_else(|| LakeError::UndefinedColumn {
                table: source.to_string(),
                column: name.to_string(),
                hint: available(),
            })?;
        if name.len() > MAX_IDENT_BYTES {
            return Err(LakeError::InvalidName(format!(
                "column \"{name}\" of Delta table \"{source}\" is longer than the {MAX_IDENT_BYTES} bytes a Postgres column name can have"
            )));
        }
        if !name.is_ascii() && !crate::types::repertoire::database_is_unicode() {
            return Err(LakeError::Unsupported {
                message: format!(
                    "column \"{name}\" of Delta table \"{source}\" has a non-ASCII name, which pg_lakesync cannot use in a database whose encoding is not UTF8"
                ),
                hint: Some("Leave the column out with option \"columns\", or use a UTF8 database.".into()),
            });
        }
        let pg = pg_type_for(source, name, field.data_type())?;
        columns.push(ColumnPlan {
            name: name.to_string(),
            delta_type: field.data_type().clone(),
            pg,
        });
    }
    let position = |col: &str, role: &str| -> Result<usize> {
        if let Some(i) = columns.iter().position(|c| c.name == col) {
            return Ok(i);
        }
        if schema.field(col).is_some() {
            Err(LakeError::invalid_with_hint(
                format!("{role} column \"{col}\" is not among the synced columns"),
                "Add it to option \"columns\".",
            ))
        } else {
            Err(LakeError::UndefinedColumn {
                table: source.to_string(),
                column: col.to_string(),
                hint: available(),
            })
        }
    };
    let mut key = Vec::with_capacity(primary_key.len());
    for k in primary_key {
        let i = position(k, "primary key")?;
        if key.contains(&i) {
            return Err(LakeError::invalid(format!(
                "primary key names column \"{k}\" twice"
            )));
        }
        key.push(i);
    }
    let timeseries = match &opts.timeseries_key {
        None => None,
        Some(ts) => {
            if key.is_empty() {
                return Err(LakeError::invalid_with_hint(
                    "option \"timeseries_key\" needs a primary key",
                    "Pass primary_key => ARRAY['...'] to create_synced_table.",
                ));
            }
            let i = position(ts, "timeseries_key")?;
            if columns[i].pg == crate::types::PgType::Jsonb {
                return Err(LakeError::invalid(format!(
                    "timeseries_key column \"{ts}\" has type {}, which has no order",
                    delta_type_name(&columns[i].delta_type)
                )));
            }
            Some(i)
        }
    };
    Ok(ColumnsPlan {
        columns,
        key,
        timeseries,
    })
}

impl ColumnsPlan {
    /// The plan for data written when the table had only the columns `present`: the synced
    /// columns among them, with the types they have now. None when a key or timeseries column
    /// is missing, as no change of such data can be applied by key.
    pub fn restricted_to(&self, present: &[String]) -> Option<ColumnsPlan> {
        let keep: Vec<usize> = (0..self.columns.len())
            .filter(|&i| present.contains(&self.columns[i].name))
            .collect();
        let new_pos = |old: usize| keep.iter().position(|&k| k == old);
        let key = self
            .key
            .iter()
            .map(|&k| new_pos(k))
            .collect::<Option<Vec<_>>>()?;
        let timeseries = match self.timeseries {
            None => None,
            Some(t) => Some(new_pos(t)?),
        };
        Some(ColumnsPlan {
            columns: keep.iter().map(|&i| self.columns[i].clone()).collect(),
            key,
            timeseries,
        })
    }
}
