//! ARRAY, MAP, STRUCT and VARIANT values as JSON text (stored as jsonb).
//!
//! Driven by the Delta type, so a VARIANT nested anywhere is decoded to the JSON it encodes.
//! Scalars inside follow the same conventions as Postgres' to_json: numbers stay numbers
//! (decimals keep every digit), dates and timestamps become ISO 8601 strings, binary becomes a
//! `\x…` hex string. JSON has no NaN or Infinity, so those floats become the strings "NaN",
//! "Infinity" and "-Infinity". Maps with string keys become objects; other maps become arrays of
//! `[key, value]` pairs.
//!
//! Why not arrow-json's encoder: it writes NaN and ±Infinity as `null` (losing them), cannot
//! decode VARIANT, refuses maps whose keys are not strings, and has no
//! hook to refuse or strip a NUL byte or to check each string against the database's encoding
//! while naming the column — the parts of this module that are left.

use super::numeric::decimal_text;
use super::temporal::{date_text, timestamp_text};
use crate::options::NullBytes;
use arrow_array::cast::AsArray;
use arrow_array::types::*;
use arrow_array::{Array, ArrayRef, StructArray};
use delta_kernel::schema::{DataType, PrimitiveType};
use std::fmt::Write as _;

/// Why a value could not become JSON; the caller adds column and key.
#[derive(Debug)]
pub enum JsonError {
    NullByte,
    Invalid(String),
    /// A character the database's encoding cannot hold.
    Unrepresentable(char),
}

pub struct JsonWriter<'a> {
    pub null_bytes: NullBytes,
    pub repertoire: Option<&'a super::repertoire::Repertoire>,
}

impl JsonWriter<'_> {
    pub fn write(
        &self,
        out: &mut Vec<u8>,
        arr: &dyn Array,
        row: usize,
        dt: &DataType,
    ) -> Result<(), JsonError> {
        if arr.is_null(row) {
            out.extend_from_slice(b"null");
            return Ok(());
        }
        match dt {
            DataType::Primitive(p) => self.write_primitive(out, arr, row, p),
            DataType::Array(at) => {
                let (values, start, end) = list_range(arr, row)?;
                out.push(b'[');
                for (n, i) in (start..end).enumerate() {
                    if n > 0 {
                        out.push(b',');
                    }
                    self.write(out, values.as_ref(), i, at.element_type())?;
                }
                out.push(b']');
                Ok(())
            }
            DataType::Struct(st) => {
                let s = arr.as_struct_opt().ok_or_else(|| {
                    JsonError::Invalid("struct value is not an Arrow struct".into())
                })?;
                out.push(b'{');
                for (n, (field, child)) in st.fields().zip(s.columns()).enumerate() {
                    if n > 0 {
                        out.push(b',');
                    }
                    self.write_str(out, field.name())?;
                    out.push(b':');
                    self.write(out, child.as_ref(), row, field.data_type())?;
                }
                out.push(b'}');
                Ok(())
            }
            DataType::Map(mt) => {
                let m = arr
                    .as_map_opt()
                    .ok_or_else(|| JsonError::Invalid("map value is not an Arrow map".into()))?;
                let offsets = m.value_offsets();
                let (start, end) = (offsets[row] as usize, offsets[row + 1] as usize);
                let (keys, values) = (m.keys(), m.values());
                let string_keys =
                    matches!(mt.key_type(), DataType::Primitive(PrimitiveType::String));
                out.push(if string_keys { b'{' } else { b'[' });
                for (n, i) in (start..end).enumerate() {
                    if n > 0 {
                        out.push(b',');
                    }
                    if string_keys {
                        self.write(out, keys.as_ref(), i, mt.key_type())?;
                        out.push(b':');
                        self.write(out, values.as_ref(), i, mt.value_type())?;
                    } else {
                        out.push(b'[');
                        self.write(out, keys.as_ref(), i, mt.key_type())?;
                        out.push(b',');
                        self.write(out, values.as_ref(), i, mt.value_type())?;
                        out.push(b']');
                    }
                }
                out.push(if string_keys { b'}' } else { b']' });
                Ok(())
            }
            DataType::Variant(_) => self.write_variant(out, arr, row),
        }
    }

    fn write_primitive(
        &self,
        out: &mut Vec<u8>,
        arr: &dyn Array,
        row: usize,
        p: &PrimitiveType,
    ) -> Result<(), JsonError> {
        let mismatch = || {
            JsonError::Invalid(format!(
                "unexpected Arrow type {} for {p:?}",
                arr.data_type()
            ))
        };
        match p {
            PrimitiveType::Boolean => {
                let v = arr.as_boolean_opt().ok_or_else(mismatch)?.value(row);
                out.extend_from_slice(if v { b"true" } else { b"false" });
            }
            PrimitiveType::Byte => num(
                out,
                arr.as_primitive_opt::<Int8Type>()
                    .ok_or_else(mismatch)?
                    .value(row),
            ),
            PrimitiveType::Short => num(
                out,
                arr.as_primitive_opt::<Int16Type>()
                    .ok_or_else(mismatch)?
                    .value(row),
            ),
            PrimitiveType::Integer => num(
                out,
                arr.as_primitive_opt::<Int32Type>()
                    .ok_or_else(mismatch)?
                    .value(row),
            ),
            PrimitiveType::Long => num(
                out,
                arr.as_primitive_opt::<Int64Type>()
                    .ok_or_else(mismatch)?
                    .value(row),
            ),
            PrimitiveType::Float => float(
                out,
                arr.as_primitive_opt::<Float32Type>()
                    .ok_or_else(mismatch)?
                    .value(row) as f64,
                true,
            ),
            PrimitiveType::Double => float(
                out,
                arr.as_primitive_opt::<Float64Type>()
                    .ok_or_else(mismatch)?
                    .value(row),
                false,
            ),
            PrimitiveType::Decimal(d) => {
                let v = arr
                    .as_primitive_opt::<Decimal128Type>()
                    .ok_or_else(mismatch)?
                    .value(row);
                out.extend_from_slice(decimal_text(v, d.scale()).as_bytes());
            }
            PrimitiveType::String => {
                let s = string_value(arr, row).ok_or_else(mismatch)?;
                self.write_str(out, s)?;
            }
            PrimitiveType::Binary => {
                let b = binary_value(arr, row).ok_or_else(mismatch)?;
                let mut s = String::with_capacity(2 + 2 * b.len());
                s.push_str("\\x");
                for byte in b {
                    let _ = write!(s, "{byte:02x}");
                }
                self.write_str(out, &s)?;
            }
            PrimitiveType::Date => {
                let d = arr
                    .as_primitive_opt::<Date32Type>()
                    .ok_or_else(mismatch)?
                    .value(row);
                self.write_str(out, &date_text(d))?;
            }
            PrimitiveType::Timestamp | PrimitiveType::TimestampNtz => {
                let t = arr
                    .as_primitive_opt::<TimestampMicrosecondType>()
                    .ok_or_else(mismatch)?
                    .value(row);
                self.write_str(
                    out,
                    &timestamp_text(t, matches!(p, PrimitiveType::Timestamp)),
                )?;
            }
            #[allow(unreachable_patterns)]
            other => {
                return Err(JsonError::Invalid(format!(
                    "unsupported nested type {other:?}"
                )))
            }
        }
        Ok(())
    }

    fn write_variant(
        &self,
        out: &mut Vec<u8>,
        arr: &dyn Array,
        row: usize,
    ) -> Result<(), JsonError> {
        let s: &StructArray = arr
            .as_struct_opt()
            .ok_or_else(|| JsonError::Invalid("variant value is not an Arrow struct".into()))?;
        let metadata = s
            .column_by_name("metadata")
            .and_then(|c| binary_value(c.as_ref(), row))
            .ok_or_else(|| JsonError::Invalid("variant value has no metadata".into()))?;
        let value = s
            .column_by_name("value")
            .and_then(|c| binary_value(c.as_ref(), row))
            .ok_or_else(|| {
                JsonError::Invalid(
                    "variant value has no value (shredded variants are not supported)".into(),
                )
            })?;
        let variant = parquet_variant::Variant::try_new(metadata, value)
            .map_err(|e| JsonError::Invalid(format!("invalid variant: {e}")))?;
        let mut buf = Vec::new();
        parquet_variant_json::VariantToJson::to_json(&variant, &mut buf)
            .map_err(|e| JsonError::Invalid(format!("invalid variant: {e}")))?;
        if buf.windows(6).any(|w| w == b"\\u0000") {
            match self.null_bytes {
                NullBytes::Error => return Err(JsonError::NullByte),
                NullBytes::Strip => {
                    let text = String::from_utf8_lossy(&buf).replace("\\u0000", "");
                    out.extend_from_slice(text.as_bytes());
                    return Ok(());
                }
            }
        }
        out.extend_from_slice(&buf);
        Ok(())
    }

    /// A JSON string literal; jsonb cannot hold \u0000, so NUL follows the null_bytes option.
    pub fn write_str(&self, out: &mut Vec<u8>, s: &str) -> Result<(), JsonError> {
        if let Some(c) = self.repertoire.and_then(|r| r.first_missing(s)) {
            return Err(JsonError::Unrepresentable(c));
        }
        out.push(b'"');
        for c in s.chars() {
            match c {
                '"' => out.extend_from_slice(b"\\\""),
                '\\' => out.extend_from_slice(b"\\\\"),
                '\n' => out.extend_from_slice(b"\\n"),
                '\r' => out.extend_from_slice(b"\\r"),
                '\t' => out.extend_from_slice(b"\\t"),
                '\0' => match self.null_bytes {
                    NullBytes::Error => return Err(JsonError::NullByte),
                    NullBytes::Strip => {}
                },
                c if (c as u32) < 0x20 => {
                    let _ = write!(StrSink(out), "\\u{:04x}", c as u32);
                }
                c => {
                    let mut b = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
                }
            }
        }
        out.push(b'"');
        Ok(())
    }
}

struct StrSink<'a>(&'a mut Vec<u8>);
impl std::fmt::Write for StrSink<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

fn num<T: std::fmt::Display>(out: &mut Vec<u8>, v: T) {
    let _ = write!(StrSink(out), "{v}");
}

fn float(out: &mut Vec<u8>, v: f64, single: bool) {
    if v.is_nan() {
        out.extend_from_slice(b"\"NaN\"");
    } else if v.is_infinite() {
        out.extend_from_slice(if v > 0.0 {
            b"\"Infinity\""
        } else {
            b"\"-Infinity\""
        });
    } else if single {
        // Shortest text that round-trips the f32, as Postgres prints real.
        let _ = write!(StrSink(out), "{}", v as f32);
    } else {
        let _ = write!(StrSink(out), "{v}");
    }
}

fn list_range(arr: &dyn Array, row: usize) -> Result<(ArrayRef, usize, usize), JsonError> {
    if let Some(l) = arr.as_list_opt::<i32>() {
        let o = l.value_offsets();
        return Ok((l.values().clone(), o[row] as usize, o[row + 1] as usize));
    }
    if let Some(l) = arr.as_list_opt::<i64>() {
        let o = l.value_offsets();
        return Ok((l.values().clone(), o[row] as usize, o[row + 1] as usize));
    }
    if let Some(l) = arr.as_fixed_size_list_opt() {
        let n = l.value_length() as usize;
        return Ok((l.values().clone(), row * n, row * n + n));
    }
    Err(JsonError::Invalid(format!(
        "array value is an Arrow {}",
        arr.data_type()
    )))
}

pub fn string_value(arr: &dyn Array, row: usize) -> Option<&str> {
    if let Some(a) = arr.as_string_opt::<i32>() {
        return Some(a.value(row));
    }
    if let Some(a) = arr.as_string_opt::<i64>() {
        return Some(a.value(row));
    }
    arr.as_string_view_opt().map(|a| a.value(row))
}

pub fn binary_value(arr: &dyn Array, row: usize) -> Option<&[u8]> {
    if let Some(a) = arr.as_binary_opt::<i32>() {
        return Some(a.value(row));
    }
    if let Some(a) = arr.as_binary_opt::<i64>() {
        return Some(a.value(row));
    }
    if let Some(a) = arr.as_binary_view_opt() {
        return Some(a.value(row));
    }
    arr.as_fixed_size_binary_opt().map(|a| a.value(row))
}
