//! Target names: parsed like Postgres parses a qualified name, but with errors that name the
//! input, and without silent truncation of long names.

use crate::error::{LakeError, Result};

/// Postgres' NAMEDATALEN - 1.
pub const MAX_IDENT_BYTES: usize = 63;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetName {
    pub schema: String,
    pub table: String,
}

impl TargetName {
    /// `schema.table` or `table` (then `default_schema`); quoted parts keep case and spaces.
    pub fn parse(input: &str, default_schema: &str) -> Result<Self> {
        let parts = split_qualified(input)?;
        match parts.as_slice() {
            [table] => Ok(TargetName {
                schema: default_schema.to_string(),
                table: table.clone(),
            }),
            [schema, table] => Ok(TargetName {
                schema: schema.clone(),
                table: table.clone(),
            }),
            _ => Err(LakeError::InvalidName(format!(
                "target \"{input}\" must be a table name, optionally qualified by a schema name"
            ))),
        }
    }

    /// The canonical spelling stored in the catalog and usable in SQL: `public.trips`,
    /// `"Sales"."Trips 2024"`.
    pub fn qualified(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.table))
    }
}

fn split_qualified(input: &str) -> Result<Vec<String>> {
    let invalid =
        |why: &str| LakeError::InvalidName(format!("invalid table name \"{input}\": {why}"));
    let chars: Vec<char> = input.trim().chars().collect();
    let mut parts = Vec::new();
    let mut i = 0;
    loop {
        let mut part = String::new();
        if i < chars.len() && chars[i] == '"' {
            i += 1;
            loop {
                if i >= chars.len() {
                    return Err(invalid("unterminated quoted identifier"));
                }
                if chars[i] == '"' {
                    if i + 1 < chars.len() && chars[i + 1] == '"' {
                        part.push('"');
                        i += 2;
                        continue;
                    }
                    i += 1;
                    break;
                }
                part.push(chars[i]);
                i += 1;
            }
            if part.is_empty() {
                return Err(invalid("zero-length quoted identifier"));
            }
        } else {
            while i < chars.len() && chars[i] != '.' {
                let c = chars[i];
                let ok = c == '_'
                    || c.is_alphabetic()
                    || (!part.is_empty() && (c.is_ascii_digit() || c == '$'));
                if !ok {
                    return Err(invalid(&format!(
                        "unexpected character '{c}' (quote names with double quotes)"
                    )));
                }
                part.extend(c.to_lowercase());
                i += 1;
            }
            if part.is_empty() {
                return Err(invalid("empty name part"));
            }
        }
        if part.len() > MAX_IDENT_BYTES {
            return Err(invalid(&format!(
                "\"{part}\" is longer than {MAX_IDENT_BYTES} bytes"
            )));
        }
        parts.push(part);
        if i >= chars.len() {
            break;
        }
        if chars[i] != '.' {
            return Err(invalid("expected '.' after a quoted identifier"));
        }
        i += 1;
        if i >= chars.len() {
            return Err(invalid("name ends with '.'"));
        }
    }
    Ok(parts)
}

/// Quotes an identifier exactly when Postgres needs it (its own quote_identifier).
pub fn quote_ident(s: &str) -> String {
    pgrx::spi::quote_identifier(s)
}
