//! Arrow record batches → rows of Postgres' binary COPY format.
//!
//! Arrays are downcast once per batch; the row loop only matches on a small enum and appends
//! bytes, so decoding runs on the producer thread while the backend inserts.

use super::json::{binary_value, string_value, JsonError, JsonWriter};
use super::numeric::write_numeric;
use super::repertoire::Repertoire;
use super::temporal::{pg_date, pg_timestamp};
use super::PgType;
use crate::error::{LakeError, Result};
use crate::options::NullBytes;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use arrow_array::cast::AsArray;
use arrow_array::types::*;
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType as ArrowType, TimeUnit};
use delta_kernel::schema::DataType;

/// One column of the target: its name, its Delta type and the Postgres type it is stored as.
#[derive(Debug, Clone)]
pub struct ColumnPlan {
    pub name: String,
    pub delta_type: DataType,
    pub pg: PgType,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct EncodeStats {
    pub rows: u64,
    /// Rows left out because their primary key holds a NULL.
    pub skipped_null_key: u64,
}

/// The 19-byte header of a binary COPY stream.
pub const COPY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// The trailer: a field count of -1.
pub const COPY_TRAILER: &[u8] = &[0xff, 0xff];

pub struct RowEncoder<'a> {
    pub columns: &'a [ColumnPlan],
    /// Positions in `columns` of the primary key columns.
    pub key: &'a [usize],
    pub null_bytes: NullBytes,
    /// The characters the database can store, when it cannot store them all.
    pub repertoire: Option<&'a Repertoire>,
}

enum Col<'a> {
    Bool(&'a arrow_array::BooleanArray),
    I8(&'a arrow_array::Int8Array),
    I16(&'a arrow_array::Int16Array),
    I32(&'a arrow_array::Int32Array),
    I64(&'a arrow_array::Int64Array),
    F32(&'a arrow_array::Float32Array),
    F64(&'a arrow_array::Float64Array),
    Decimal(&'a arrow_array::Decimal128Array, u8),
    Text(&'a dyn Array),
    Bytes(&'a dyn Array),
    Date(&'a arrow_array::Date32Array),
    Ts(&'a arrow_array::TimestampMicrosecondArray),
    Json(&'a dyn Array, &'a DataType),
}

impl<'a> RowEncoder<'a> {
    /// Appends every row of `batch` (columns in plan order) to `out`.
    pub fn encode(
        &self,
        batch: &RecordBatch,
        out: &mut Vec<u8>,
        stats: &mut EncodeStats,
    ) -> Result<()> {
        if batch.num_columns() != self.columns.len() {
            return Err(LakeError::Internal(format!(
                "scan returned {} columns, expected {}",
                batch.num_columns(),
                self.columns.len()
            )));
        }
        let arrays: Vec<ArrayRef> = batch
            .columns()
            .iter()
            .zip(self.columns)
            .map(|(a, c)| normalize(a, c))
            .collect::<Result<_>>()?;
        let cols: Vec<Col> = arrays
            .iter()
            .zip(self.columns)
            .map(|(a, c)| downcast(a.as_ref(), c))
            .collect::<Result<_>>()?;
        let ncols = (self.columns.len() as i16).to_be_bytes();
        let json = JsonWriter {
            null_bytes: self.null_bytes,
            repertoire: self.repertoire,
        };
        out.reserve(batch.num_rows() * 16 * self.columns.len());
        'rows: for row in 0..batch.num_rows() {
            for &k in self.key {
                if arrays[k].is_null(row) {
                    stats.skipped_null_key += 1;
                    continue 'rows;
                }
            }
            out.extend_from_slice(&ncols);
            for (i, col) in cols.iter().enumerate() {
                if arrays[i].is_null(row) {
                    out.extend_from_slice(&(-1i32).to_be_bytes());
                    continue;
                }
                self.field(col, row, out, &json)
                    .map_err(|e| self.row_error(e, i, row, &arrays))?;
            }
            stats.rows += 1;
        }
        Ok(())
    }

    fn field(
        &self,
        col: &Col,
        row: usize,
        out: &mut Vec<u8>,
        json: &JsonWriter,
    ) -> std::result::Result<(), FieldError> {
        match col {
            Col::Bool(a) => fixed(out, &[a.value(row) as u8]),
            Col::I8(a) => fixed(out, &(a.value(row) as i16).to_be_bytes()),
            Col::I16(a) => fixed(out, &a.value(row).to_be_bytes()),
            Col::I32(a) => fixed(out, &a.value(row).to_be_bytes()),
            Col::I64(a) => fixed(out, &a.value(row).to_be_bytes()),
            Col::F32(a) => fixed(out, &a.value(row).to_bits().to_be_bytes()),
            Col::F64(a) => fixed(out, &a.value(row).to_bits().to_be_bytes()),
            Col::Date(a) => {
                let d =
                    pg_date(a.value(row)).ok_or(FieldError::Range("date out of range".into()))?;
                fixed(out, &d.to_be_bytes())
            }
            Col::Ts(a) => {
                let t = pg_timestamp(a.value(row))
                    .ok_or(FieldError::Range("timestamp out of range".into()))?;
                fixed(out, &t.to_be_bytes())
            }
            Col::Decimal(a, scale) => {
                let at = begin_var(out);
                write_numeric(a.value(row), *scale, out);
                end_var(out, at);
            }
            Col::Text(a) => {
                let s = string_value(*a, row).unwrap_or_default();
                if let Some(c) = self.repertoire.and_then(|r| r.first_missing(s)) {
                    return Err(FieldError::Unrepresentable(c));
                }
                if s.as_bytes().contains(&0) {
                    match self.null_bytes {
                        NullBytes::Error => return Err(FieldError::NullByte),
                        NullBytes::Strip => {
                            let stripped: Vec<u8> = s.bytes().filter(|b| *b != 0).collect();
                            var(out, &stripped);
                            return Ok(());
                        }
                    }
                }
                var(out, s.as_bytes())
            }
            Col::Bytes(a) => var(out, binary_value(*a, row).unwrap_or_default()),
            Col::Json(a, dt) => {
                let at = begin_var(out);
                out.push(1); // jsonb binary format version
                json.write(out, *a, row, dt).map_err(|e| match e {
                    JsonError::NullByte => FieldError::NullByte,
                    JsonError::Invalid(m) => FieldError::Invalid(m),
                    JsonError::Unrepresentable(c) => FieldError::Unrepresentable(c),
                })?;
                end_var(out, at);
            }
        }
        Ok(())
    }

    fn row_error(&self, e: FieldError, col: usize, row: usize, arrays: &[ArrayRef]) -> LakeError {
        let column = self.columns[col].name.clone();
        let key = self.key_text(row, arrays);
        match e {
            FieldError::NullByte => LakeError::NullByte { column, key },
            FieldError::Unrepresentable(character) => LakeError::Unrepresentable {
                column,
                key,
                character,
                encoding: self
                    .repertoire
                    .map(|r| r.encoding.clone())
                    .unwrap_or_default(),
            },
            FieldError::Range(detail) => LakeError::OutOfRange {
                column,
                key,
                detail,
            },
            FieldError::Invalid(detail) => LakeError::Corrupt {
                source: String::new(),
                detail: format!("column \"{column}\" of the row with key {key}: {detail}"),
            },
        }
    }

    /// `(id, region)=(42, eu)`, as Postgres names keys; the row number when there is no key.
    pub fn key_text(&self, row: usize, arrays: &[ArrayRef]) -> String {
        if self.key.is_empty() {
            return format!("(row {})", row + 1);
        }
        let names: Vec<&str> = self
            .key
            .iter()
            .map(|&k| self.columns[k].name.as_str())
            .collect();
        let opts = FormatOptions::default().with_null("NULL");
        let values: Vec<String> = self
            .key
            .iter()
            .map(|&k| {
                ArrayFormatter::try_new(arrays[k].as_ref(), &opts)
                    .map(|f| f.value(row).to_string())
                    .unwrap_or_else(|_| "?".into())
            })
            .collect();
        format!("({})=({})", names.join(", "), values.join(", "))
    }
}

enum FieldError {
    NullByte,
    Range(String),
    Invalid(String),
    Unrepresentable(char),
}

fn fixed(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn var(out: &mut Vec<u8>, bytes: &[u8]) {
    fixed(out, bytes)
}

fn begin_var(out: &mut Vec<u8>) -> usize {
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    at
}

fn end_var(out: &mut [u8], at: usize) {
    let len = (out.len() - at - 4) as i32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// Brings the few Arrow encodings a reader may hand us for one Delta type to the one we encode.
fn normalize(a: &ArrayRef, c: &ColumnPlan) -> Result<ArrayRef> {
    let want = match (a.data_type(), &c.pg) {
        (ArrowType::Dictionary(_, v), _) => Some(v.as_ref().clone()),
        (ArrowType::Timestamp(unit, tz), PgType::Timestamp | PgType::Timestamptz)
            if *unit != TimeUnit::Microsecond =>
        {
            Some(ArrowType::Timestamp(TimeUnit::Microsecond, tz.clone()))
        }
        (ArrowType::Date64, PgType::Date) => Some(ArrowType::Date32),
        // Data written before a Delta type widening, read for the widened column.
        (ArrowType::Int8 | ArrowType::Int16, PgType::Int4) => Some(ArrowType::Int32),
        (ArrowType::Int8 | ArrowType::Int16 | ArrowType::Int32, PgType::Int8) => {
            Some(ArrowType::Int64)
        }
        (
            ArrowType::Int8 | ArrowType::Int16 | ArrowType::Int32 | ArrowType::Float32,
            PgType::Float8,
        ) => Some(ArrowType::Float64),
        (ArrowType::Date32, PgType::Timestamp) => {
            Some(ArrowType::Timestamp(TimeUnit::Microsecond, None))
        }
        (
            ArrowType::Int8
            | ArrowType::Int16
            | ArrowType::Int32
            | ArrowType::Int64
            | ArrowType::Decimal128(..),
            PgType::Numeric { precision, scale },
        ) if a.data_type() != &ArrowType::Decimal128(*precision, *scale as i8) => {
            Some(ArrowType::Decimal128(*precision, *scale as i8))
        }
        _ => None,
    };
    match want {
        None => Ok(a.clone()),
        Some(t) => arrow::compute::cast(a, &t).map_err(|e| LakeError::Corrupt {
            source: String::new(),
            detail: format!("column \"{}\": {e}", c.name),
        }),
    }
}

fn downcast<'a>(a: &'a dyn Array, c: &'a ColumnPlan) -> Result<Col<'a>> {
    let bad = || {
        LakeError::Internal(format!(
            "column \"{}\": Arrow type {} does not fit Postgres type {}",
            c.name,
            a.data_type(),
            c.pg.sql()
        ))
    };
    Ok(match &c.pg {
        PgType::Bool => Col::Bool(a.as_boolean_opt().ok_or_else(bad)?),
        PgType::Int2 => match a.data_type() {
            ArrowType::Int8 => Col::I8(a.as_primitive_opt::<Int8Type>().ok_or_else(bad)?),
            _ => Col::I16(a.as_primitive_opt::<Int16Type>().ok_or_else(bad)?),
        },
        PgType::Int4 => Col::I32(a.as_primitive_opt::<Int32Type>().ok_or_else(bad)?),
        PgType::Int8 => Col::I64(a.as_primitive_opt::<Int64Type>().ok_or_else(bad)?),
        PgType::Float4 => Col::F32(a.as_primitive_opt::<Float32Type>().ok_or_else(bad)?),
        PgType::Float8 => Col::F64(a.as_primitive_opt::<Float64Type>().ok_or_else(bad)?),
        PgType::Numeric { scale, .. } => Col::Decimal(
            a.as_primitive_opt::<Decimal128Type>().ok_or_else(bad)?,
            *scale,
        ),
        PgType::Text => {
            if !matches!(
                a.data_type(),
                ArrowType::Utf8 | ArrowType::LargeUtf8 | ArrowType::Utf8View
            ) {
                return Err(bad());
            }
            Col::Text(a)
        }
        PgType::Bytea => {
            if !matches!(
                a.data_type(),
                ArrowType::Binary
                    | ArrowType::LargeBinary
                    | ArrowType::BinaryView
                    | ArrowType::FixedSizeBinary(_)
            ) {
                return Err(bad());
            }
            Col::Bytes(a)
        }
        PgType::Date => Col::Date(a.as_primitive_opt::<Date32Type>().ok_or_else(bad)?),
        PgType::Timestamp | PgType::Timestamptz => Col::Ts(
            a.as_primitive_opt::<TimestampMicrosecondType>()
                .ok_or_else(bad)?,
        ),
        PgType::Jsonb => Col::Json(a, &c.delta_type),
    })
}
