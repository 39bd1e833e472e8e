//! A scan of one Delta snapshot, decoded into binary COPY rows on a thread of its own.
//!
//! The backend pulls ~1 MiB chunks through a bounded channel, so memory stays bounded whatever
//! the table's size, and decoding overlaps with the backend's inserts on the second core.
//! Dropping the `ScanStream` (end of sync, error or cancel) stops the thread before its next
//! batch: it raises a flag the thread checks between batches (and at every send).

use super::{classify, runtime, DeltaSource};
use crate::error::{LakeError, Result};
use crate::options::NullBytes;
use crate::types::encode::{ColumnPlan, EncodeStats, RowEncoder, COPY_HEADER, COPY_TRAILER};
use delta_kernel::engine::arrow_data::ArrowEngineData;
use delta_kernel::EngineData;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::time::Duration;

const CHUNK_BYTES: usize = 1 << 20;
const CHUNKS_IN_FLIGHT: usize = 4;

pub enum Chunk {
    /// Binary COPY rows, and how many rows they hold.
    Data(Vec<u8>, u64),
    Done(EncodeStats),
    Failed(LakeError),
}

pub struct ScanStream {
    rx: Receiver<Chunk>,
    stopped: Arc<AtomicBool>,
    /// How many rows the scan will yield, as the Delta log's file statistics say (-1 while
    /// not known, or when a file has none): the progress `lakesync.status` shows.
    pub expected: Arc<AtomicI64>,
}

impl Drop for ScanStream {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::Relaxed);
    }
}

pub enum Next {
    Chunk(Chunk),
    /// Nothing yet; the caller checks for interrupts and asks again.
    Waiting,
}

impl ScanStream {
    pub fn next_timeout(&self, wait: Duration) -> Next {
        match self.rx.recv_timeout(wait) {
            Ok(c) => Next::Chunk(c),
            Err(RecvTimeoutError::Timeout) => Next::Waiting,
            Err(RecvTimeoutError::Disconnected) => Next::Chunk(Chunk::Failed(LakeError::Internal(
                "the Delta scan thread ended without finishing".into(),
            ))),
        }
    }
}

/// Batches of Arrow data from the kernel, whatever produced them (a scan, a change feed).
pub type Batches = Box<dyn Iterator<Item = delta_kernel::DeltaResult<Box<dyn EngineData>>>>;

/// Starts scanning `source` for `columns` (in that order).
pub fn start(
    source: DeltaSource,
    columns: Vec<ColumnPlan>,
    key: Vec<usize>,
    null_bytes: NullBytes,
) -> ScanStream {
    start_with(
        source,
        columns,
        key,
        null_bytes,
        |source, names, expected, _stopped| {
            // The log first (no data yet): how many rows to expect, and how wide they are.
            let (rows, width) = files_at_a_glance(source)?;
            if let Some(rows) = rows {
                expected.store(rows as i64, Ordering::Relaxed);
            }
            let schema = source.snapshot.schema().project(names)?;
            let scan = source
                .snapshot
                .clone()
                .scan_builder()
                .with_schema(schema)
                .build()?;
            Ok(Box::new(scan.execute(source.engine_for_rows_of(width))?) as Batches)
        },
        |source, e| classify(&source.location, e),
    )
}

/// Runs `batches` (given the source and the column names to read) on a thread of its own and
/// encodes what it yields into binary COPY rows of `columns`; `on_error` says what a kernel
/// error means to the user.
pub fn start_with<F, E>(
    source: DeltaSource,
    columns: Vec<ColumnPlan>,
    key: Vec<usize>,
    null_bytes: NullBytes,
    batches: F,
    on_error: E,
) -> ScanStream
where
    F: FnOnce(
            &DeltaSource,
            &[&str],
            &Arc<AtomicI64>,
            &Arc<AtomicBool>,
        ) -> delta_kernel::DeltaResult<Batches>
        + Send
        + 'static,
    E: Fn(&DeltaSource, delta_kernel::Error) -> LakeError + Send + 'static,
{
    let (tx, rx) = sync_channel(CHUNKS_IN_FLIGHT);
    // Looked up here, in the backend: the scan thread cannot ask Postgres.
    let repertoire = crate::types::repertoire::for_database();
    let stopped = Arc::new(AtomicBool::new(false));
    let stop = stopped.clone();
    let expected = Arc::new(AtomicI64::new(-1));
    let expect = expected.clone();
    std::thread::Builder::new()
        .name("lakesync-scan".into())
        .spawn(move || {
            let fail_tx = tx.clone();
            let out = Out {
                tx: &tx,
                stop,
                repertoire,
                expected: expect,
            };
            let produced = produce(
                &source, &columns, &key, null_bytes, batches, &on_error, &out,
            );
            if let Err(e) = produced {
                let _ = fail_tx.send(Chunk::Failed(e));
            }
        })
        .expect("cannot start the pg_lakesync scan thread");
    ScanStream {
        rx,
        stopped,
        expected,
    }
}

/// Where the scan thread sends its chunks, and the flag the backend raises when it stops
/// listening.
struct Out<'a> {
    tx: &'a SyncSender<Chunk>,
    stop: Arc<AtomicBool>,
    repertoire: Option<Arc<crate::types::repertoire::Repertoire>>,
    expected: Arc<AtomicI64>,
}

impl Out<'_> {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

fn produce<F, E>(
    source: &DeltaSource,
    columns: &[ColumnPlan],
    key: &[usize],
    null_bytes: NullBytes,
    batches: F,
    on_error: &E,
    out: &Out,
) -> Result<()>
where
    F: FnOnce(
        &DeltaSource,
        &[&str],
        &Arc<AtomicI64>,
        &Arc<AtomicBool>,
    ) -> delta_kernel::DeltaResult<Batches>,
    E: Fn(&DeltaSource, delta_kernel::Error) -> LakeError,
{
    let _guard = runtime().enter();
    let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
    let encoder = RowEncoder {
        columns,
        key,
        null_bytes,
        repertoire: out.repertoire.as_deref(),
    };
    let mut stats = EncodeStats::default();
    let mut buf = Vec::with_capacity(CHUNK_BYTES + CHUNK_BYTES / 4);
    buf.extend_from_slice(COPY_HEADER);
    let batches =
        batches(source, &names, &out.expected, &out.stop).map_err(|e| on_error(source, e))?;
    let mut sent_rows = 0u64;
    for data in batches {
        if out.stopped() {
            return Ok(()); // the backend stopped listening: cancelled or failed
        }
        let data = data.map_err(|e| on_error(source, e))?;
        let batch = ArrowEngineData::try_from_engine_data(data).map_err(|e| on_error(source, e))?;
        encoder
            .encode(batch.record_batch(), &mut buf, &mut stats)
            .map_err(|e| match e {
                LakeError::Corrupt { detail, .. } => LakeError::Corrupt {
                    source: source.location.display(),
                    detail,
                },
                other => other,
            })?;
        if buf.len() >= CHUNK_BYTES {
            let full =
                std::mem::replace(&mut buf, Vec::with_capacity(CHUNK_BYTES + CHUNK_BYTES / 4));
            let rows = stats.rows - std::mem::replace(&mut sent_rows, stats.rows);
            if out.tx.send(Chunk::Data(full, rows)).is_err() {
                return Ok(()); // the backend stopped listening: cancelled or failed
            }
        }
    }
    buf.extend_from_slice(COPY_TRAILER);
    if out
        .tx
        .send(Chunk::Data(buf, stats.rows - sent_rows))
        .is_ok()
    {
        let _ = out.tx.send(Chunk::Done(stats));
    }
    Ok(())
}

/// How many rows the snapshot holds, as the log's file statistics say (None when a file has
/// none), and the widest rows of its files as stored (see `stored_row_width`).
fn files_at_a_glance(source: &DeltaSource) -> delta_kernel::DeltaResult<(Option<u64>, f64)> {
    let _guard = runtime().enter();
    let scan = source.snapshot.clone().scan_builder().build()?;
    let mut acc = (Some(0u64), Vec::new());
    for meta in scan.scan_metadata(source.engine.as_ref())? {
        acc = meta?.visit_scan_files(acc, |(total, sizes), f| {
            let n = f.stats.as_ref().map(|s| s.num_records);
            *total = total.zip(n).map(|(t, n)| t + n);
            sizes.push((f.size, n));
        })?;
    }
    Ok((acc.0, super::stored_row_width(acc.1)))
}
