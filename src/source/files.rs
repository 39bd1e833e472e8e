//! Source of incremental syncs without a change feed (option `change_detection: 'files'`): the
//! changes between two versions derived from the data files themselves.
//!
//! A file is identified by its path and deletion vector. Files of the old version that the new
//! one no longer has (removed, or given a new deletion vector) are "gone"; files of the new
//! version that the old one did not have are "new". Every row of a new file is upserted; every
//! key of a gone file that no new file holds again is deleted. The apply step gets both as one
//! change stream: keys of gone files as `delete` at a lower version than the rows of new files
//! as `insert`, so a key in both is an upsert. An append-only range reads no gone file; a range
//! of compactions only (dataChange = false) reads nothing at all.

use super::changes::{CHANGE_TYPE, COMMIT_VERSION};
use super::scan::{start_with, Batches, ScanStream};
use super::{classify, runtime, DeltaSource};
use crate::error::{LakeError, Result};
use crate::options::NullBytes;
use crate::types::encode::ColumnPlan;
use arrow::array::{ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType as ArrowType, Field, Schema as ArrowSchema};
use delta_kernel::engine::arrow_data::ArrowEngineData;
use delta_kernel::scan::state::{transform_to_logical, DvInfo, ScanFile};
use delta_kernel::snapshot::SnapshotRef;
use delta_kernel::{DeltaResult, EngineData, FileMeta, Snapshot};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// The files that differ between the synced version and the source's version.
pub struct FileDiff {
    pub gone: HashSet<String>,
    pub new: HashSet<String>,
    /// The synced version, read for the keys of gone files.
    pub old: SnapshotRef,
    /// The bytes of the gone and new files (what the sync reads), and of every file of the
    /// source's version (what a full refresh reads).
    pub bytes: u64,
    pub table_bytes: u64,
}

impl FileDiff {
    pub fn is_empty(&self) -> bool {
        self.gone.is_empty() && self.new.is_empty()
    }
}

/// Compares the files of version `synced` with the source's; None when every commit in between
/// only rearranged data (dataChange = false), which changes no row.
pub fn diff(source: &DeltaSource, synced: i64) -> Result<Option<FileDiff>> {
    let _guard = runtime().enter();
    let gap = |e| super::changes::gap_or_error(source, synced + 1, source.version(), e);
    if only_rearranged(source, synced + 1, source.version())? {
        return Ok(None);
    }
    let old = Snapshot::builder_for(source.snapshot.table_root().clone())
        .at_version(synced as u64)
        .build(source.engine.as_ref())
        .map_err(gap)?;
    let before = file_states(source, &old).map_err(gap)?;
    let after = file_states(source, &source.snapshot).map_err(gap)?;
    let (mut gone, mut new, mut bytes) = (HashSet::new(), HashSet::new(), 0u64);
    for (p, (dv, size)) in &before {
        if after.get(p).map(|a| &a.0) != Some(dv) {
            gone.insert(p.clone());
            bytes += size;
        }
    }
    for (p, (dv, size)) in &after {
        if before.get(p).map(|b| &b.0) != Some(dv) {
            new.insert(p.clone());
            bytes += size;
        }
    }
    let table_bytes = after.values().map(|(_, size)| size).sum();
    Ok(Some(FileDiff {
        gone,
        new,
        old,
        bytes,
        table_bytes,
    }))
}

/// Whether the commits `from..=to` add and remove files only with dataChange = false.
fn only_rearranged(source: &DeltaSource, from: i64, to: i64) -> Result<bool> {
    for actions in super::changes::commit_actions(source, from, to)? {
        for a in actions {
            for kind in ["add", "remove", "metaData"] {
                if let Some(action) = a.get(kind) {
                    let data_change = action
                        .get("dataChange")
                        .and_then(|d| d.as_bool())
                        .unwrap_or(true);
                    if kind == "metaData" || data_change {
                        return Ok(false);
                    }
                }
            }
        }
    }
    Ok(true)
}

/// Every file of `snapshot` with its deletion vector and size.
fn file_states(
    source: &DeltaSource,
    snapshot: &SnapshotRef,
) -> DeltaResult<HashMap<String, (DvInfo, u64)>> {
    fn collect(out: &mut HashMap<String, (DvInfo, u64)>, f: ScanFile) {
        out.insert(f.path, (f.dv_info, f.size.max(0) as u64));
    }
    let scan = snapshot.clone().scan_builder().build()?;
    let mut out = HashMap::new();
    for meta in scan.scan_metadata(source.engine.as_ref())? {
        out = meta?.visit_scan_files(out, collect)?;
    }
    Ok(out)
}

/// Streams the change rows of `diff`: the key columns of gone files as deletes, then every
/// synced column of new files as inserts.
pub fn start_gone(
    source: DeltaSource,
    diff: &FileDiff,
    key_columns: Vec<ColumnPlan>,
    null_bytes: NullBytes,
) -> ScanStream {
    let old = diff.old.clone();
    let paths = diff.gone.clone();
    let key: Vec<usize> = (0..key_columns.len()).collect();
    stream(
        source,
        old,
        paths,
        key_columns,
        key,
        null_bytes,
        "delete",
        0,
    )
}

pub fn start_new(
    source: DeltaSource,
    diff: &FileDiff,
    columns: Vec<ColumnPlan>,
    key: Vec<usize>,
    null_bytes: NullBytes,
) -> ScanStream {
    let now = source.snapshot.clone();
    let paths = diff.new.clone();
    stream(source, now, paths, columns, key, null_bytes, "insert", 1)
}

#[allow(clippy::too_many_arguments)]
fn stream(
    source: DeltaSource,
    snapshot: SnapshotRef,
    paths: HashSet<String>,
    columns: Vec<ColumnPlan>,
    key: Vec<usize>,
    null_bytes: NullBytes,
    change_type: &'static str,
    order: i64,
) -> ScanStream {
    let from = snapshot.version() as i64;
    let to = source.version();
    start_with(
        source,
        super::changes::change_columns(&columns),
        key,
        null_bytes,
        move |source, names, _expected, _stopped| {
            let data_names = &names[..names.len() - 2];
            read_files(
                source,
                snapshot,
                paths,
                data_names,
                Some((change_type, order)),
            )
        },
        move |source, e| {
            match classify(&source.location, e) {
            LakeError::DataFileMissing { detail, .. } => LakeError::Gap {
                reason: format!(
                    "a data file of Delta table \"{}\" that versions {from} to {to} changed is gone (removed by VACUUM?): {detail}",
                    source.location.display()
                ),
            },
            other => other,
        }
        },
    )
}

/// A scan of exactly the files `paths` of the source's snapshot (a share of a parallel load).
pub fn start_files(
    source: DeltaSource,
    paths: HashSet<String>,
    columns: Vec<ColumnPlan>,
    key: Vec<usize>,
    null_bytes: NullBytes,
) -> ScanStream {
    let snapshot = source.snapshot.clone();
    start_with(
        source,
        columns,
        key,
        null_bytes,
        move |source, names, _expected, _stopped| read_files(source, snapshot, paths, names, None),
        |source, e| classify(&source.location, e),
    )
}

/// The data files of the source's snapshot: path and size in bytes.
pub fn list(source: &DeltaSource) -> Result<Vec<(String, i64)>> {
    let _guard = runtime().enter();
    let files = file_states(source, &source.snapshot).map_err(|e| classify(&source.location, e))?;
    Ok(files
        .into_iter()
        .map(|(path, (_, size))| (path, size as i64))
        .collect())
}

/// Reads `names` from exactly the files `paths` of `snapshot` (with the deletion vectors they
/// have there), each batch tagged with a change type and order when `tag` says so.
fn read_files(
    source: &DeltaSource,
    snapshot: SnapshotRef,
    paths: HashSet<String>,
    names: &[&str],
    tag: Option<(&'static str, i64)>,
) -> DeltaResult<Batches> {
    fn collect(out: &mut (HashSet<String>, Vec<ScanFile>), f: ScanFile) {
        if out.0.contains(&f.path) {
            out.1.push(f);
        }
    }
    let schema = snapshot.schema().project(names)?;
    let scan = snapshot
        .clone()
        .scan_builder()
        .with_schema(schema)
        .build()?;
    let mut found = (paths, Vec::new());
    if !found.0.is_empty() {
        for meta in scan.scan_metadata(source.engine.as_ref())? {
            found = meta?.visit_scan_files(found, collect)?;
        }
    }
    // A share of a parallel load names every file it must read: one missing is lost rows.
    if tag.is_none() && found.1.len() != found.0.len() {
        return Err(delta_kernel::Error::generic(format!(
            "{} of the {} data files to read are not in version {} of the table",
            found.0.len().abs_diff(found.1.len()),
            found.0.len(),
            snapshot.version()
        )));
    }
    let width = super::stored_row_width(
        found
            .1
            .iter()
            .map(|f| (f.size, f.stats.as_ref().map(|s| s.num_records))),
    );
    let engine = source.engine_for_rows_of(width);
    let root = snapshot.table_root().clone();
    let physical = scan.physical_schema().clone();
    let logical = scan.logical_schema().clone();
    // One file at a time, one batch at a time: nothing of a file is held beyond the batch the
    // COPY is taking, however large the file.
    let batches = found.1.into_iter().flat_map(move |file| -> Batches {
        let opened = (|| {
            let keep = file.dv_info.get_selection_vector(engine.as_ref(), &root)?;
            let meta = FileMeta {
                last_modified: 0,
                size: file.size as u64,
                location: root.join(&file.path)?,
            };
            let data =
                engine
                    .parquet_handler()
                    .read_parquet_files(&[meta], physical.clone(), None)?;
            DeltaResult::Ok((keep, data))
        })();
        let (keep, data) = match opened {
            Ok(v) => v,
            Err(e) => return Box::new(std::iter::once(Err(e))),
        };
        let (engine, physical, logical) = (engine.clone(), physical.clone(), logical.clone());
        let transform = file.transform.clone();
        let mut offset = 0usize;
        Box::new(data.map(move |data| {
            let data = transform_to_logical(
                engine.as_ref(),
                data?,
                &physical,
                &logical,
                transform.clone(),
            )?;
            let batch = ArrowEngineData::try_from_engine_data(data)?
                .record_batch()
                .clone();
            let rows = batch.num_rows();
            let batch = select(batch, keep.as_deref(), offset)?;
            offset += rows;
            match tag {
                Some((change_type, order)) => tagged(batch, change_type, order),
                None => Ok(Box::new(ArrowEngineData::new(batch)) as Box<dyn EngineData>),
            }
        }))
    });
    Ok(Box::new(batches))
}

/// Keeps the rows the deletion vector keeps (rows past its end are kept).
fn select(batch: RecordBatch, keep: Option<&[bool]>, offset: usize) -> DeltaResult<RecordBatch> {
    let Some(keep) = keep else {
        return Ok(batch);
    };
    let mask: BooleanArray = (0..batch.num_rows())
        .map(|i| Some(keep.get(offset + i).copied().unwrap_or(true)))
        .collect();
    Ok(arrow::compute::filter_record_batch(&batch, &mask)?)
}

/// Appends the change type and order columns the apply step expects.
fn tagged(batch: RecordBatch, change_type: &str, order: i64) -> DeltaResult<Box<dyn EngineData>> {
    let n = batch.num_rows();
    let mut fields: Vec<Arc<Field>> = batch.schema().fields().iter().cloned().collect();
    fields.push(Arc::new(Field::new(CHANGE_TYPE, ArrowType::Utf8, false)));
    fields.push(Arc::new(Field::new(
        COMMIT_VERSION,
        ArrowType::Int64,
        false,
    )));
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    columns.push(Arc::new(StringArray::from(vec![change_type; n])));
    columns.push(Arc::new(Int64Array::from(vec![order; n])));
    let batch = RecordBatch::try_new(Arc::new(ArrowSchema::new(fields)), columns)?;
    Ok(Box::new(ArrowEngineData::new(batch)))
}
