//! Large reads are mapped from files, not held in the backend's memory.
//!
//! The Parquet reader asks for a whole row group's column chunks at once, and holds them while
//! it decodes that row group page by page. Held in memory, that is as large as the writer made its
//! row groups: 128 MiB for Spark, 283 MiB for one writer measured, more for others. A read of more
//! than `MAP_ABOVE` bytes is therefore served from a memory mapping instead: the ranges are first
//! streamed to an unlinked file in Postgres' temporary directory and that private file is mapped.
//! (Never the data file itself: a file another host truncates or an NFS/FUSE mount that fails
//! would turn a touch of a mapped page into SIGBUS, which restarts the whole server.) Mapped pages are the kernel's page cache:
//! read on demand, dropped under pressure, never the backend's private memory. What the backend
//! itself holds stays at the decoded batches and pages, whatever the file layout.

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::{BoxStream, StreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetRange, GetResult, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};
use std::io::Write;
use std::ops::Range;
use std::sync::Arc;

/// Reads up to this size stay in memory (the footer, small row groups, log files).
pub const MAP_ABOVE: u64 = 16 << 20;

#[derive(Debug)]
pub struct Mapped {
    inner: Arc<dyn ObjectStore>,
}

impl Mapped {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        Mapped { inner }
    }

    async fn mapped_ranges(&self, l: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        // Each range streamed into one unlinked file, then mapped.
        let mut file = spill_file().map_err(|e| io_error(l, e))?;
        let mut at = Vec::with_capacity(ranges.len());
        let mut offset = 0u64;
        for r in ranges {
            let opts = GetOptions {
                range: Some(GetRange::Bounded(r.clone())),
                ..Default::default()
            };
            let mut stream = self.inner.get_opts(l, opts).await?.into_stream();
            let start = offset;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                file.write_all(&chunk).map_err(|e| io_error(l, e))?;
                offset += chunk.len() as u64;
            }
            if offset - start != r.end - r.start {
                return Err(object_store::Error::Generic {
                    store: "pg_lakesync",
                    source: format!(
                        "{l}: asked for {} bytes at {}, got {}",
                        r.end - r.start,
                        r.start,
                        offset - start
                    )
                    .into(),
                });
            }
            at.push(start..offset);
        }
        file.flush().map_err(|e| io_error(l, e))?;
        if offset == 0 {
            return Ok(ranges.iter().map(|_| Bytes::new()).collect());
        }
        let whole = Bytes::from_owner(Map::of(&file).map_err(|e| io_error(l, e))?);
        Ok(at
            .into_iter()
            .map(|r| whole.slice(r.start as usize..r.end as usize))
            .collect())
    }
}

fn io_error(l: &Path, e: std::io::Error) -> object_store::Error {
    object_store::Error::Generic {
        store: "pg_lakesync",
        source: format!("cannot map the data of {l}: {e}").into(),
    }
}

/// A new file in Postgres' temporary directory of the default tablespace (the backend's working
/// directory is the data directory), unlinked at once: it goes when its last mapping does.
fn spill_file() -> std::io::Result<std::fs::File> {
    let dir = std::path::Path::new("base/pgsql_tmp");
    std::fs::create_dir_all(dir)?;
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = dir.join(format!("pgsql_tmp_lakesync_{}.{n}", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(file)
}

/// A read-only shared mapping of a whole file, unmapped when the last slice of it is dropped.
struct Map {
    ptr: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is read-only and owned by this value alone.
unsafe impl Send for Map {}
unsafe impl Sync for Map {}

impl Map {
    fn of(file: &std::fs::File) -> std::io::Result<Map> {
        use std::os::fd::AsRawFd;
        let len = file.metadata()?.len() as usize;
        if len == 0 {
            return Ok(Map {
                ptr: std::ptr::null_mut(),
                len: 0,
            });
        }
        // SAFETY: a fresh read-only mapping of an open file; checked for failure below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Map { ptr, len })
    }
}

impl AsRef<[u8]> for Map {
    fn as_ref(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: ptr..ptr+len is mapped readable for the life of self.
        unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) }
    }
}

impl Drop for Map {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: unmapping exactly what `of` mapped.
            unsafe { libc::munmap(self.ptr, self.len) };
        }
    }
}

impl std::fmt::Display for Mapped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

#[async_trait]
impl ObjectStore for Mapped {
    async fn put_opts(&self, l: &Path, p: PutPayload, o: PutOptions) -> Result<PutResult> {
        self.inner.put_opts(l, p, o).await
    }

    async fn put_multipart_opts(
        &self,
        l: &Path,
        o: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(l, o).await
    }

    async fn get_opts(&self, l: &Path, o: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(l, o).await
    }

    async fn get_ranges(&self, l: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        let total: u64 = ranges.iter().map(|r| r.end.saturating_sub(r.start)).sum();
        if total <= MAP_ABOVE {
            return self.inner.get_ranges(l, ranges).await;
        }
        self.mapped_ranges(l, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, o: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, o).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, o: RenameOptions) -> Result<()> {
        self.inner.rename_opts(from, to, o).await
    }
}
