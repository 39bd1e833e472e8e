//! Target names: parsed by Postgres' own parser, resolved through the caller's search_path as
//! Postgres resolves them, with errors that name the input and no silent truncation.

use crate::error::{LakeError, Result};
use pgrx::prelude::*;

/// Postgres' NAMEDATALEN - 1.
pub const MAX_IDENT_BYTES: usize = 63;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetName {
    pub schema: String,
    pub table: String,
}

impl TargetName {
    /// The name of a table to create: `schema.table`, or a bare `table` in the schema CREATE
    /// TABLE would use (the first existing schema of the search_path).
    pub fn for_new(input: &str) -> Result<Self> {
        let (schema, table) = parse(input)?;
        let schema = match schema {
            Some(s) => s,
            None => crate::catalog::default_schema()?,
        };
        // A temporary table lives as long as one session; a spec of it would outlive it.
        if schema.starts_with("pg_temp") {
            return Err(LakeError::InvalidName(format!(
                "target \"{input}\" is in a temporary schema; a synced table must be a permanent table"
            )));
        }
        Ok(TargetName { schema, table })
    }

    /// The name of an existing table: a bare `table` is looked up through the search_path, as
    /// a query would find it; one that is nowhere (dropped) is taken in the creation schema.
    pub fn for_existing(input: &str) -> Result<Self> {
        let (schema, table) = parse(input)?;
        let schema = match schema {
            Some(s) => s,
            None => match crate::catalog::schema_on_search_path(&table)? {
                Some(s) => s,
                None => crate::catalog::default_schema()?,
            },
        };
        Ok(TargetName { schema, table })
    }

    /// The canonical spelling stored in the catalog and usable in SQL: `public.trips`,
    /// `"Sales"."Trips 2024"`.
    pub fn qualified(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.table))
    }
}

/// Splits `schema.table` or `table` as Postgres does (its `parse_ident`: unquoted names fold
/// ASCII letters to lower case and nothing else, quoted ones keep everything), but refuses what
/// Postgres would silently truncate. Returns (schema, table).
pub fn parse(input: &str) -> Result<(Option<String>, String)> {
    let invalid =
        |why: &str| LakeError::InvalidName(format!("invalid table name \"{input}\": {why}"));
    let input_owned = input.to_string();
    let parts = crate::subxact::run(false, move || {
        Spi::get_one_with_args::<Vec<String>>(
            "SELECT pg_catalog.parse_ident($1, true)",
            &[input_owned.as_str().into()],
        )
        .map_err(|e| LakeError::Internal(e.to_string()))
    });
    let parts = match parts {
        Ok(Ok(Some(p))) => p,
        Ok(Ok(None)) => return Err(invalid("empty name")),
        Ok(Err(e)) => return Err(e),
        // parse_ident's own ERROR: "string is not a valid identifier: ..." and the like.
        Err(caught) => return Err(invalid(&crate::subxact::message(&caught))),
    };
    for part in &parts {
        if part.is_empty() {
            return Err(invalid("empty name part"));
        }
        if part.len() > MAX_IDENT_BYTES {
            return Err(invalid(&format!(
                "\"{part}\" is longer than {MAX_IDENT_BYTES} bytes"
            )));
        }
    }
    match <[String; 1]>::try_from(parts) {
        Ok([table]) => Ok((None, table)),
        Err(parts) => match <[String; 2]>::try_from(parts) {
            Ok([schema, table]) => Ok((Some(schema), table)),
            Err(_) => Err(LakeError::InvalidName(format!(
                "target \"{input}\" must be a table name, optionally qualified by a schema name"
            ))),
        },
    }
}

/// Quotes an identifier exactly when Postgres needs it (its own quote_identifier).
pub fn quote_ident(s: &str) -> String {
    pgrx::spi::quote_identifier(s)
}
