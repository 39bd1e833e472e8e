//! Source of incremental syncs: the Delta Change Data Feed between two versions, read with the
//! kernel's `table_changes` (`_change_data` files where a commit has them, its add/remove
//! actions otherwise; commits with dataChange=false, such as OPTIMIZE, yield nothing).

use super::scan::{start_with, Batches, ScanStream};
use super::{unwrap_kernel, DeltaSource};
use crate::error::{LakeError, Result};
use crate::options::NullBytes;
use crate::types::encode::ColumnPlan;
use crate::types::PgType;
use arrow::compute::{filter_record_batch, nullif};
use arrow::row::{Row, RowConverter, SortField};
use arrow_array::cast::AsArray;
use arrow_array::{BooleanArray, RecordBatch};
use arrow_schema::Schema;
use delta_kernel::engine::arrow_data::ArrowEngineData;
use delta_kernel::schema::DataType;
use delta_kernel::table_changes::TableChanges;
use delta_kernel::EngineData;
use std::collections::HashSet;
use std::sync::Arc;

/// The change feed's own columns, as the staging table names them.
pub const CHANGE_TYPE: &str = "_change_type";
pub const COMMIT_VERSION: &str = "_commit_version";

/// Whether the source has the change feed switched on at its current version.
pub fn cdf_enabled(source: &DeltaSource) -> bool {
    source
        .snapshot
        .table_properties()
        .enable_change_data_feed
        .unwrap_or(false)
}

/// The id Delta gives a table when it is created; a new id at the same path is a new table.
pub fn table_id(source: &DeltaSource) -> String {
    source
        .snapshot
        .table_configuration()
        .metadata()
        .id()
        .to_string()
}

/// The columns a change stream carries: the synced columns, then change type and version.
pub fn change_columns(columns: &[ColumnPlan]) -> Vec<ColumnPlan> {
    let mut all = columns.to_vec();
    all.push(ColumnPlan {
        name: CHANGE_TYPE.into(),
        delta_type: DataType::STRING,
        pg: PgType::Text,
    });
    all.push(ColumnPlan {
        name: COMMIT_VERSION.into(),
        delta_type: DataType::LONG,
        pg: PgType::Int8,
    });
    all
}

/// Checks that the change feed of versions `from..=to` can be read, before anything is written:
/// the reasons it cannot are gaps a user must know about.
pub fn check_range(source: &DeltaSource, from: i64, to: i64) -> Result<()> {
    let root = source.snapshot.table_root().clone();
    TableChanges::try_new(root, source.engine.as_ref(), from as u64, Some(to as u64))
        .map(|_| ())
        .map_err(|e| gap_or_error(source, from, to, e))
}

/// Streams the changes of versions `from..=to` as binary COPY rows of `change_columns(columns)`.
pub fn start(
    source: DeltaSource,
    columns: Vec<ColumnPlan>,
    key: Vec<usize>,
    null_bytes: NullBytes,
    from: i64,
    to: i64,
) -> ScanStream {
    let keep = key.clone();
    start_with(
        source,
        change_columns(&columns),
        key,
        null_bytes,
        move |source, names, _expected, _stopped| {
            let root = source.snapshot.table_root().clone();
            let changes =
                TableChanges::try_new(root, source.engine.as_ref(), from as u64, Some(to as u64))?;
            let schema = changes.schema().project(names)?;
            let scan = changes.into_scan_builder().with_schema(schema).build()?;
            let batches = scan.execute(source.engine.clone())?;
            Ok(
                Box::new(batches.map(move |b| b.and_then(|b| keys_only_when_gone(b, &keep))))
                    as Batches,
            )
        },
        move |source, e| gap_or_error(source, from, to, e),
    )
}

/// Why versions `from..=to` cannot be replayed, in the words a user needs; errors that are not
/// gaps keep their class.
pub fn gap_or_error(source: &DeltaSource, from: i64, to: i64, e: delta_kernel::Error) -> LakeError {
    use delta_kernel::Error as K;
    let e = unwrap_kernel(e);
    let text = e.to_string();
    let table = source.location.display();
    let reason = match &e {
        K::ChangeDataFeedUnsupported(v) => Some(format!(
            "the change data feed of Delta table \"{table}\" is not enabled at version {v}"
        )),
        K::MissingVersion => Some(format!(
            "the log of Delta table \"{table}\" no longer holds versions {from} to {to} (removed by log retention)"
        )),
        _ if text.contains("Expected the first commit to have version")
            || text.contains("versions are not contiguous")
            || text.contains("Missing commit") =>
        {
            Some(format!(
                "the log of Delta table \"{table}\" no longer holds versions {from} to {to} (removed by log retention)"
            ))
        }
        _ if text.contains("schemas are different") || text.contains("schema") && text.contains("ncompatible") => {
            Some(format!(
                "the schema of Delta table \"{table}\" changed between versions {from} and {to} in a way the change feed cannot replay"
            ))
        }
        _ => None,
    };
    match reason {
        Some(reason) => LakeError::Gap { reason },
        None => match super::classify(&source.location, e) {
            LakeError::DataFileMissing { detail, .. } => LakeError::Gap {
                reason: format!(
                    "a change data file of Delta table \"{table}\" for versions {from} to {to} is gone (removed by VACUUM?): {detail}"
                ),
            },
            other => other,
        },
    }
}

/// The actions of each commit `from..=to`, in order (one JSON object per action).
pub fn commit_actions(
    source: &DeltaSource,
    from: i64,
    to: i64,
) -> Result<Vec<Vec<serde_json::Value>>> {
    let _guard = super::runtime().enter();
    let root = source.snapshot.table_root().clone();
    let mut files = Vec::new();
    for v in from..=to {
        let url = root
            .join(&format!("_delta_log/{v:020}.json"))
            .map_err(|e| LakeError::Internal(format!("log file URL: {e}")))?;
        files.push((url, None));
    }
    // A commit file that is not there was removed by log retention.
    let gone = |e| {
        match gap_or_error(source, from, to, e) {
        LakeError::Gap { reason } if reason.starts_with("a change data file") => LakeError::Gap {
            reason: format!(
                "the log of Delta table \"{}\" no longer holds versions {from} to {to} (removed by log retention)",
                source.location.display()
            ),
        },
        other => other,
    }
    };
    let contents = source
        .engine
        .storage_handler()
        .read_files(files)
        .map_err(gone)?;
    let mut out = Vec::new();
    for (v, bytes) in (from..).zip(contents) {
        let bytes = bytes.map_err(gone)?;
        let mut actions = Vec::new();
        // A line we cannot read is a commit we would misread: fail rather than skip it.
        for line in bytes.split(|b| *b == b'\n') {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            actions.push(
                serde_json::from_slice::<serde_json::Value>(line).map_err(|e| {
                    LakeError::Corrupt {
                        source: source.location.display(),
                        detail: format!("commit {v} of the log holds a line that is not JSON: {e}"),
                    }
                })?,
            );
        }
        out.push(actions);
    }
    Ok(out)
}

/// The versions in `from..=to` whose commit may change the schema (the first metaData action of
/// the range, then every one whose schema differs): the change feed is read in segments between
/// them, each with one schema.
pub fn metadata_versions(source: &DeltaSource, from: i64, to: i64) -> Result<Vec<i64>> {
    let commits = commit_actions(source, from, to)?;
    let mut schema: Option<String> = None;
    let mut out = Vec::new();
    for (v, actions) in (from..=to).zip(commits) {
        let Some(meta) = actions.iter().find_map(|a| a.get("metaData")) else {
            continue;
        };
        // The kernel reads a range only when its schemas are exactly equal (nullability and
        // field metadata such as comments included): split wherever the schema string changes,
        // whatever the synced columns are. A metaData that keeps the schema is no boundary.
        let now = meta
            .get("schemaString")
            .and_then(|s| s.as_str())
            .map(str::to_owned);
        if schema.is_none() || now != schema {
            out.push(v);
        }
        schema = now;
    }
    Ok(out)
}

/// The table's column names at `version`.
pub fn columns_at(source: &DeltaSource, version: i64) -> Result<Vec<String>> {
    let _guard = super::runtime().enter();
    let root = source.snapshot.table_root().clone();
    let snapshot = delta_kernel::Snapshot::builder_for(root)
        .at_version(version as u64)
        .build(source.engine.as_ref())
        .map_err(|e| gap_or_error(source, version, version, e))?;
    Ok(snapshot
        .schema()
        .fields()
        .map(|f| f.name().clone())
        .collect())
}

/// Rows that leave their key (deletes, update pre-images) are only needed for the key, so their
/// other columns are staged as NULL: update-heavy ranges copy and sort about half as much. A
/// pre-image whose post-image has the same key in the same commit is not staged at all: the
/// post-image wins over it in the apply anyway (writers put the two side by side, so looking
/// within one batch finds nearly all of them; a pair split by a batch boundary is staged).
fn keys_only_when_gone(
    data: Box<dyn EngineData>,
    key: &[usize],
) -> delta_kernel::DeltaResult<Box<dyn EngineData>> {
    let data = ArrowEngineData::try_from_engine_data(data)?;
    let batch = data.record_batch();
    let n = batch.num_columns();
    // The change type is the second-to-last column (see `change_columns`).
    let Some(types) = batch.column(n - 2).as_string_opt::<i32>() else {
        return Ok(data);
    };
    let batch = without_paired_preimages(batch, types, key)?.unwrap_or_else(|| batch.clone());
    let types = batch.column(n - 2).as_string::<i32>();
    let gone: BooleanArray = types
        .iter()
        .map(|t| Some(matches!(t, Some("delete" | "update_preimage"))))
        .collect();
    if gone.true_count() == 0 {
        return Ok(Box::new(ArrowEngineData::new(batch)));
    }
    let schema = batch.schema();
    let mut fields = Vec::with_capacity(n);
    let mut columns = Vec::with_capacity(n);
    for (i, (field, column)) in schema.fields().iter().zip(batch.columns()).enumerate() {
        if i >= n - 2 || key.contains(&i) {
            fields.push(field.as_ref().clone());
            columns.push(column.clone());
        } else {
            fields.push(field.as_ref().clone().with_nullable(true));
            columns.push(nullif(column, &gone)?);
        }
    }
    let slim = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
    Ok(Box::new(ArrowEngineData::new(slim)))
}

/// `batch` without the update pre-images whose key (in the same commit) has a post-image in
/// the batch, or None when there are none. Keys compare by their Arrow row encoding: equal bytes
/// are equal values in Postgres too, so nothing needed is dropped.
fn without_paired_preimages(
    batch: &RecordBatch,
    types: &arrow_array::StringArray,
    key: &[usize],
) -> delta_kernel::DeltaResult<Option<RecordBatch>> {
    if key.is_empty() || !types.iter().any(|t| t == Some("update_preimage")) {
        return Ok(None);
    }
    let n = batch.num_columns();
    // Key columns and the commit version (the last column).
    let mut by = key.to_vec();
    by.push(n - 1);
    let fields = by
        .iter()
        .map(|&i| SortField::new(batch.schema().field(i).data_type().clone()))
        .collect();
    let columns: Vec<_> = by.iter().map(|&i| batch.column(i).clone()).collect();
    let rows = RowConverter::new(fields)?.convert_columns(&columns)?;
    let after: HashSet<Row<'_>> = types
        .iter()
        .enumerate()
        .filter(|(_, t)| *t == Some("update_postimage"))
        .map(|(i, _)| rows.row(i))
        .collect();
    if after.is_empty() {
        return Ok(None);
    }
    let keep: BooleanArray = types
        .iter()
        .enumerate()
        .map(|(i, t)| {
            // A pre-image with a NULL key is left for the copy to skip and count.
            let paired = t == Some("update_preimage")
                && key.iter().all(|&k| batch.column(k).is_valid(i))
                && after.contains(&rows.row(i));
            Some(!paired)
        })
        .collect();
    if keep.true_count() == batch.num_rows() {
        return Ok(None);
    }
    Ok(Some(filter_record_batch(batch, &keep)?))
}
