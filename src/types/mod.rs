//! Type mapping, in one place: which Postgres type each Delta type becomes, and how an Arrow
//! value of it is written in Postgres' binary COPY format.
//!
//! | Delta                | Postgres              |
//! |----------------------|-----------------------|
//! | BIGINT (long)        | bigint                |
//! | INT (integer)        | integer               |
//! | SMALLINT (short)     | smallint              |
//! | TINYINT (byte)       | smallint              |
//! | BOOLEAN              | boolean               |
//! | FLOAT                | real                  |
//! | DOUBLE               | double precision      |
//! | DECIMAL(p,s)         | numeric(p,s)          |
//! | STRING               | text                  |
//! | BINARY               | bytea                 |
//! | DATE                 | date                  |
//! | TIMESTAMP            | timestamp with time zone |
//! | TIMESTAMP_NTZ        | timestamp without time zone |
//! | ARRAY / MAP / STRUCT | jsonb                 |
//! | VARIANT              | jsonb (decoded)       |

pub mod encode;
pub mod json;
pub mod numeric;
pub mod repertoire;
pub mod temporal;

use crate::error::{LakeError, Result};
use delta_kernel::schema::{DataType, PrimitiveType};

/// The Postgres type a Delta column is stored as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgType {
    Bool,
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    Numeric { precision: u8, scale: u8 },
    Text,
    Bytea,
    Date,
    Timestamp,
    Timestamptz,
    Jsonb,
}

impl PgType {
    /// The type as written in CREATE TABLE, and as `format_type` prints it.
    pub fn sql(&self) -> String {
        match self {
            PgType::Bool => "boolean".into(),
            PgType::Int2 => "smallint".into(),
            PgType::Int4 => "integer".into(),
            PgType::Int8 => "bigint".into(),
            PgType::Float4 => "real".into(),
            PgType::Float8 => "double precision".into(),
            PgType::Numeric { precision, scale } => format!("numeric({precision},{scale})"),
            PgType::Text => "text".into(),
            PgType::Bytea => "bytea".into(),
            PgType::Date => "date".into(),
            PgType::Timestamp => "timestamp without time zone".into(),
            PgType::Timestamptz => "timestamp with time zone".into(),
            PgType::Jsonb => "jsonb".into(),
        }
    }
}

/// Maps a Delta column type; anything we cannot store faithfully is an error naming the column.
pub fn pg_type_for(table: &str, column: &str, dt: &DataType) -> Result<PgType> {
    Ok(match dt {
        DataType::Primitive(p) => match p {
            PrimitiveType::Long => PgType::Int8,
            PrimitiveType::Integer => PgType::Int4,
            PrimitiveType::Short | PrimitiveType::Byte => PgType::Int2,
            PrimitiveType::Boolean => PgType::Bool,
            PrimitiveType::Float => PgType::Float4,
            PrimitiveType::Double => PgType::Float8,
            PrimitiveType::Decimal(d) => PgType::Numeric {
                precision: d.precision(),
                scale: d.scale(),
            },
            PrimitiveType::String => PgType::Text,
            PrimitiveType::Binary => PgType::Bytea,
            PrimitiveType::Date => PgType::Date,
            PrimitiveType::Timestamp => PgType::Timestamptz,
            PrimitiveType::TimestampNtz => PgType::Timestamp,
            #[allow(unreachable_patterns)]
            other => return Err(unsupported(table, column, &format!("{other:?}"))),
        },
        DataType::Array(_) | DataType::Map(_) | DataType::Struct(_) | DataType::Variant(_) => {
            PgType::Jsonb
        }
    })
}

fn unsupported(table: &str, column: &str, type_name: &str) -> LakeError {
    LakeError::Unsupported {
        message: format!(
            "column \"{column}\" of Delta table \"{table}\" has type {type_name}, which pg_lakesync \
             cannot map to a Postgres type"
        ),
        hint: Some("Leave the column out with option \"columns\".".into()),
    }
}

/// Human name of a Delta type, for messages.
pub fn delta_type_name(dt: &DataType) -> String {
    match dt {
        DataType::Primitive(p) => format!("{p:?}").to_lowercase(),
        DataType::Array(_) => "array".into(),
        DataType::Map(_) => "map".into(),
        DataType::Struct(_) => "struct".into(),
        DataType::Variant(_) => "variant".into(),
    }
}
