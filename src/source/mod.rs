//! Source: where a synced table's rows come from — a Delta table read with the delta kernel.
//!
//! Everything here runs off the backend's thread (see `offload`): it never calls Postgres.

pub mod changes;
pub mod estimate;
pub mod files;
pub mod location;
pub mod scan;
pub mod store;

use crate::error::{LakeError, Result};
use delta_kernel::snapshot::SnapshotRef;
use delta_kernel::{Engine, Snapshot};
use delta_kernel_default_engine::executor::tokio::TokioMultiThreadExecutor;
use delta_kernel_default_engine::DefaultEngineBuilder;
use deltalake::logstore::LogStore;
use location::SourceLocation;
use std::num::NonZero;
use std::sync::{Arc, OnceLock};

/// One tokio runtime per backend, made on first use (after the fork from the postmaster).
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        return_large_buffers();
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("lakesync-io")
            .enable_all()
            .build()
            .expect("cannot start the pg_lakesync I/O runtime")
    })
}

/// Buffers above this size get their own mapping, returned to the OS when freed.
const MMAP_THRESHOLD: i32 = 2 << 20;

/// Keeps a sync's memory at what it holds, not what it once held. glibc raises its mmap threshold
/// (up to 32 MiB) each time a large block is freed, after which the row groups a scan fetches
/// (a few MiB to 100+ MiB each) are carved from per-thread arenas that keep them after use:
/// measured on a 10 M-row load, peak private memory 134–199 MiB with the default, 95 MiB with a
/// fixed 2 MiB threshold. Only in backends that sync (called when the I/O runtime starts); smaller
/// blocks — Arrow batches, decoded pages, COPY chunks — are reused from the arenas as before.
fn return_large_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocation policy for later allocations.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}

/// Gives the memory a finished scan freed back to the OS (called when its COPY ends). glibc keeps
/// freed memory in the arena of the thread that freed it (the scan and I/O threads each have
/// one), so without this the backend would carry a scan's buffers through the index build, the
/// apply statement and the commit.
pub fn release_scan_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory; it is safe to call from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// A Delta table opened at one version.
#[derive(Clone)]
pub struct DeltaSource {
    pub location: SourceLocation,
    pub engine: Arc<dyn Engine>,
    pub snapshot: SnapshotRef,
    store: Arc<dyn object_store::ObjectStore>,
}

impl DeltaSource {
    pub fn version(&self) -> i64 {
        self.snapshot.version() as i64
    }

    /// An engine on the same store whose batches of rows `bytes_per_row` wide (as stored)
    /// stay near `BATCH_BYTES` decoded: a batch of 8,192 rows of 64 KiB documents would be
    /// 512 MiB.
    pub fn engine_for_rows_of(&self, bytes_per_row: f64) -> Arc<dyn Engine> {
        engine_with(self.store.clone(), batch_rows(bytes_per_row))
    }
}

/// Decoded bytes one batch should stay near.
const BATCH_BYTES: f64 = 16.0 * 1024.0 * 1024.0;
/// How much larger a row is decoded than stored, as a rule of thumb for Parquet's compression
/// and encodings (dictionary-encoded repeats can be more; the batch's rows bound those).
const DECODED_PER_STORED: f64 = 4.0;
const MIN_BATCH_ROWS: usize = 64;

/// Rows per batch for rows `bytes_per_row` wide as stored (0 or unknown: the default).
fn batch_rows(bytes_per_row: f64) -> usize {
    if bytes_per_row.is_nan() || bytes_per_row <= 0.0 {
        return BATCH_ROWS;
    }
    let rows = BATCH_BYTES / (bytes_per_row * DECODED_PER_STORED);
    (rows as usize).clamp(MIN_BATCH_ROWS, BATCH_ROWS)
}

/// The widest rows of these files, as stored: a file's bytes over its row count.
pub fn stored_row_width<'a>(files: impl IntoIterator<Item = (i64, Option<u64>)> + 'a) -> f64 {
    files
        .into_iter()
        .filter_map(|(size, rows)| rows.filter(|&n| n > 0).map(|n| size as f64 / n as f64))
        .fold(0.0, f64::max)
}

/// Files the kernel opens ahead (reads their footers) while we decode; their data is read one file
/// at a time, a whole row group at once. The kernel's default is 1,000 files.
const READAHEAD_FILES: usize = 2;
/// Rows per Arrow batch: large enough that per-batch work is noise, small enough to stream.
const BATCH_ROWS: usize = 8192;

/// A kernel engine on the table's object store, on our I/O runtime, with our batch size.
fn engine(store: Arc<dyn object_store::ObjectStore>) -> Arc<dyn Engine> {
    engine_with(store, BATCH_ROWS)
}

fn engine_with(store: Arc<dyn object_store::ObjectStore>, batch_rows: usize) -> Arc<dyn Engine> {
    let executor = TokioMultiThreadExecutor::new(runtime().handle().clone());
    Arc::new(
        DefaultEngineBuilder::new(store)
            .with_task_executor(Arc::new(executor))
            .with_buffer_size(NonZero::new(READAHEAD_FILES).expect("nonzero"))
            .with_batch_size(NonZero::new(batch_rows).expect("nonzero"))
            .build(),
    )
}

/// Opens the Delta table at `location`, at `version` or the latest.
pub fn open(location: &SourceLocation, version: Option<i64>) -> Result<DeltaSource> {
    location.check_exists()?;
    let _guard = runtime().enter();
    let (store, root): (Arc<dyn object_store::ObjectStore>, _) = match &location.access {
        Some(access) => (
            Arc::new(store::mapped::Mapped::new(
                access.build(&location.url, &location.display())?,
            )),
            location.url.clone(),
        ),
        None if location.is_local_file() => {
            let log_store = deltalake::DeltaTableBuilder::from_url(location.url.clone())
                .and_then(|b| b.build_storage())
                .map_err(|e| LakeError::Delta {
                    source: location.display(),
                    detail: e.to_string(),
                })?;
            (
                Arc::new(store::mapped::Mapped::new(
                    log_store.root_object_store(None),
                )),
                log_store.root_url().clone(),
            )
        }
        None => {
            return Err(LakeError::Internal(format!(
                "no credential was resolved for \"{}\"",
                location.display()
            )))
        }
    };
    let engine = engine(store.clone());
    let mut builder = Snapshot::builder_for(root.as_str());
    if let Some(v) = version {
        builder = builder.at_version(v as u64);
    }
    let snapshot = match builder.build(engine.as_ref()) {
        Ok(s) => s,
        Err(e) => {
            let e = unwrap_kernel(e);
            if let Some(v) = version {
                // A pinned version that is not there: say which versions are.
                if let Ok(latest) = Snapshot::builder_for(root.as_str()).build(engine.as_ref()) {
                    if latest.version() < v as u64 {
                        return Err(LakeError::invalid(format!(
                            "Delta table \"{}\" has no version {v}; its latest version is {}",
                            location.display(),
                            latest.version()
                        )));
                    }
                    return Err(LakeError::invalid_with_hint(
                        format!(
                            "version {v} of Delta table \"{}\" can no longer be read: {}",
                            location.display(),
                            e
                        ),
                        "Its log files may have been removed by log retention; pin a newer version.",
                    ));
                }
            }
            return Err(classify(location, e));
        }
    };
    Ok(DeltaSource {
        location: location.clone(),
        engine,
        snapshot,
        store,
    })
}

/// The kernel wraps errors in a backtrace when RUST_BACKTRACE is set; users need the cause.
pub fn unwrap_kernel(e: delta_kernel::Error) -> delta_kernel::Error {
    match e {
        delta_kernel::Error::Backtraced { source, .. } => unwrap_kernel(*source),
        other => other,
    }
}

/// Sorts a kernel error into the class a user can act on.
pub fn classify(location: &SourceLocation, e: delta_kernel::Error) -> LakeError {
    use delta_kernel::Error as K;
    let source = location.display();
    let e = unwrap_kernel(e);
    let text = e.to_string();
    if location.access.is_some() {
        if let Some(err) = store_failure(location, &text) {
            return err;
        }
        // An object store has no directories: a path without a log is simply not there.
        if text.contains("No files in log segment") {
            return LakeError::SourceNotFound(source);
        }
    }
    if text.contains("not found") || text.contains("No such file") {
        // Whichever layer noticed it (object store, parquet reader), a file the log names is gone.
        if !matches!(
            e,
            K::MissingVersion
                | K::MissingMetadata
                | K::MissingProtocol
                | K::MissingMetadataAndProtocol
        ) {
            return LakeError::DataFileMissing {
                source,
                detail: text,
            };
        }
    }
    match e {
        K::Unsupported(m) => LakeError::Unsupported {
            message: format!(
                "Delta table \"{source}\" uses a feature pg_lakesync cannot read: {m}"
            ),
            hint: None,
        },
        K::InvalidProtocol(m) if m.contains("eature") => LakeError::Unsupported {
            message: format!(
                "Delta table \"{source}\" uses a feature pg_lakesync cannot read: {m}"
            ),
            hint: None,
        },
        K::FileNotFound(m) => LakeError::DataFileMissing { source, detail: m },
        K::ObjectStore(object_store::Error::NotFound { path, .. }) => LakeError::DataFileMissing {
            source,
            detail: format!("{path} not found"),
        },
        K::IOError(io) if io.kind() == std::io::ErrorKind::NotFound => LakeError::DataFileMissing {
            source,
            detail: io.to_string(),
        },
        K::MissingVersion
        | K::MissingMetadata
        | K::MissingProtocol
        | K::MissingMetadataAndProtocol => LakeError::NotDeltaTable(source),
        K::Parquet(p) => LakeError::Corrupt {
            source,
            detail: p.to_string(),
        },
        K::Arrow(a) => LakeError::Corrupt {
            source,
            detail: a.to_string(),
        },
        K::MalformedJson(j) => LakeError::Corrupt {
            source,
            detail: format!("malformed log entry: {j}"),
        },
        K::DeletionVector(m) => LakeError::Corrupt {
            source,
            detail: format!("deletion vector: {m}"),
        },
        other => LakeError::Delta {
            source,
            detail: other.to_string(),
        },
    }
}

/// An object store's refusal or silence, told apart by what its error says (it reaches us
/// through the kernel, the Parquet reader or object_store, each wrapping it differently).
pub fn store_failure(location: &SourceLocation, text: &str) -> Option<LakeError> {
    // Status codes only as object_store writes them: a bare "403" could be a version number.
    const DENIED: &[&str] = &[
        "status code: 403",
        "status code: 401",
        "lacked the necessary privileges",
        "lacked valid authentication credentials",
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "AuthenticationFailed",
        "AuthorizationFailure",
        "PermissionDenied",
        "Unauthenticated",
    ];
    const MISSING: &[&str] = &[
        "NoSuchBucket",
        "ContainerNotFound",
        "The specified bucket does not exist",
        "The specified container does not exist",
        "bucket does not exist",
    ];
    const SILENT: &[&str] = &[
        "error sending request",
        "Connection refused",
        "connection closed",
        "timed out",
        "Timeout",
        "dns error",
        "connection reset",
        "error trying to connect",
        "request or response body error",
        "error decoding response body",
    ];
    let source = location.display();
    let detail = text.to_string();
    if MISSING.iter().any(|m| text.contains(m)) {
        return Some(LakeError::SourceNotFound(source));
    }
    if DENIED.iter().any(|m| text.contains(m)) {
        let credential = location.access.as_ref().and_then(|a| a.credential.clone());
        return Some(LakeError::StoreDenied {
            source,
            credential,
            detail,
        });
    }
    if SILENT.iter().any(|m| text.contains(m)) {
        return Some(LakeError::StoreUnavailable { source, detail });
    }
    None
}
