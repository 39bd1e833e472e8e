//! Schema evolution: how the target table must change to hold the Delta table's current schema.
//!
//! Adding a column and widening a type (Delta's type widening: integer → wider integer,
//! float → double, a decimal with more digits, date → timestamp_ntz) keep every stored value, so
//! a sync applies them on the fly. Dropping, renaming or narrowing a column would lose or
//! misplace data: a sync refuses them and only `full_refresh` applies them.

use super::ColumnsPlan;
use crate::types::encode::ColumnPlan;
use crate::types::PgType;

#[derive(Debug, Clone)]
pub enum Change {
    Add(ColumnPlan),
    Widen {
        column: ColumnPlan,
        from: String,
    },
    /// A type change that is not a widening.
    Retype {
        column: ColumnPlan,
        from: String,
    },
    /// A column the Delta table no longer has (dropped, or renamed).
    Drop(String),
}

impl Change {
    /// Whether applying the change keeps every stored value.
    pub fn keeps_data(&self) -> bool {
        matches!(self, Change::Add(_) | Change::Widen { .. })
    }

    /// What the change is, for messages and the run record.
    pub fn describe(&self) -> String {
        match self {
            Change::Add(c) => format!("added column \"{}\" {}", c.name, c.pg.sql()),
            Change::Widen { column, from } => format!(
                "widened column \"{}\" from {from} to {}",
                column.name,
                column.pg.sql()
            ),
            Change::Retype { column, from } => format!(
                "column \"{}\" changed type from {from} to {}",
                column.name,
                column.pg.sql()
            ),
            Change::Drop(name) => {
                format!("column \"{name}\" is no longer in the Delta table (dropped or renamed)")
            }
        }
    }
}

/// The changes that turn `existing` (name, type as `format_type` prints it) into `plan`.
pub fn diff(existing: &[(String, String)], plan: &ColumnsPlan) -> Vec<Change> {
    let mut changes = Vec::new();
    for (name, _) in existing {
        if !plan.columns.iter().any(|c| &c.name == name) {
            changes.push(Change::Drop(name.clone()));
        }
    }
    for c in &plan.columns {
        match existing.iter().find(|(n, _)| *n == c.name) {
            None => changes.push(Change::Add(c.clone())),
            Some((_, t)) if *t != c.pg.sql() => {
                let change = if widens(t, &c.pg) {
                    Change::Widen {
                        column: c.clone(),
                        from: t.clone(),
                    }
                } else {
                    Change::Retype {
                        column: c.clone(),
                        from: t.clone(),
                    }
                };
                changes.push(change);
            }
            _ => {}
        }
    }
    changes
}

/// Whether every value of Postgres type `from` is exactly representable in `to`.
fn widens(from: &str, to: &PgType) -> bool {
    match to {
        PgType::Int4 => from == "smallint",
        PgType::Int8 => matches!(from, "smallint" | "integer"),
        PgType::Float8 => matches!(from, "real" | "smallint" | "integer"),
        PgType::Timestamp => from == "date",
        PgType::Numeric { precision, scale } => match parse_numeric(from) {
            Some((p, s)) => {
                *scale >= s && (*precision as i32 - *scale as i32) >= (p as i32 - s as i32)
            }
            None => matches!(
                (from, *precision as i32 - *scale as i32),
                ("smallint", 5..) | ("integer", 10..) | ("bigint", 20..)
            ),
        },
        _ => false,
    }
}

fn parse_numeric(t: &str) -> Option<(u8, u8)> {
    let inner = t.strip_prefix("numeric(")?.strip_suffix(')')?;
    let (p, s) = inner.split_once(',')?;
    Some((p.trim().parse().ok()?, s.trim().parse().ok()?))
}
