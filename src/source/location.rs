//! Where a Delta table lives, as the user wrote it, and who may read it.

use crate::error::{LakeError, Result};
use crate::source::store::{Provider, StoreAccess};
use object_store::{ObjectStore, ObjectStoreExt};
use pgrx::pg_sys;
use std::sync::Arc;
use url::Url;

/// How long the scheduler waits for one request to an object store's log.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// `_last_checkpoint` is a small JSON document; a larger object is not read.
const MAX_LAST_CHECKPOINT: u64 = 1 << 20;

thread_local! {
    static PROBE_DEADLINE: std::cell::Cell<Option<std::time::Instant>> =
        const { std::cell::Cell::new(None) };
}

/// Runs `f` (one look at a table's log) with its object-store requests sharing one deadline.
pub fn probe_deadline<T>(budget: std::time::Duration, f: impl FnOnce() -> T) -> T {
    let outer = PROBE_DEADLINE.replace(Some(std::time::Instant::now() + budget));
    let out = f();
    PROBE_DEADLINE.set(outer);
    out
}

#[derive(Debug, Clone)]
pub struct SourceLocation {
    pub url: Url,
    /// How to reach an object store: the options of the credential the sync uses (resolved in
    /// the backend, `credentials::locate`). None for server files.
    pub access: Option<Arc<StoreAccess>>,
}

impl SourceLocation {
    /// Accepts `file:///abs/path`, a plain absolute path, or an object store URL: `s3://`,
    /// `az://` / `abfss://` (and `abfs`, `adl`, `azure`) and `gs://`.
    pub fn parse(source: &str) -> Result<Self> {
        let s = source.trim();
        if s.is_empty() {
            return Err(LakeError::invalid("source must not be empty"));
        }
        let url = if s.starts_with('/') {
            Url::from_directory_path(s).map_err(|_| {
                LakeError::invalid(format!("source \"{s}\" is not a valid absolute path"))
            })?
        } else {
            let url = Url::parse(s).map_err(|_| {
                LakeError::invalid_with_hint(
                    format!(
                        "source \"{}\" is neither an absolute path nor a URI",
                        mask(s)
                    ),
                    "Write /absolute/path, file:///absolute/path, s3://bucket/path, az://container/path, abfss://container@account.dfs.core.windows.net/path or gs://bucket/path.",
                )
            })?;
            if Provider::of_scheme(url.scheme()).is_some() {
                return Self::parse_store_url(s, url);
            }
            if url.scheme() != "file" {
                return Err(LakeError::Unsupported {
                    message: format!("source scheme \"{}\" is not supported", url.scheme()),
                    hint: Some("Sources are server paths (file://, /absolute/path) and object stores (s3://, az://, abfss://, gs://).".into()),
                });
            }
            let path = url.to_file_path().map_err(|_| {
                LakeError::invalid(format!("source \"{}\" is not a valid file URI", mask(s)))
            })?;
            Url::from_directory_path(&path).map_err(|_| {
                LakeError::invalid(format!("source \"{}\" is not a valid file URI", mask(s)))
            })?
        };
        Ok(SourceLocation { url, access: None })
    }

    /// An object store URL, as a directory (trailing slash), without credentials in it.
    fn parse_store_url(s: &str, mut url: Url) -> Result<Self> {
        if url.host_str().is_none_or(str::is_empty) {
            return Err(LakeError::invalid(format!(
                "source \"{}\" names no bucket or container",
                mask(s)
            )));
        }
        if url.password().is_some() || url.query().is_some() {
            return Err(LakeError::invalid_with_hint(
                format!("source \"{}\" carries credentials or a query string", mask(s)),
                "Keys and tokens belong in a credential: create_credential(), then name it in the options: {\"credential\": \"name\"}.",
            ));
        }
        url.set_fragment(None);
        if !url.path().ends_with('/') {
            let path = format!("{}/", url.path());
            url.set_path(&path);
        }
        Ok(SourceLocation { url, access: None })
    }

    /// The object store provider of the source, None for server files.
    pub fn provider(&self) -> Option<Provider> {
        Provider::of_scheme(self.url.scheme())
    }

    pub fn is_local_file(&self) -> bool {
        self.url.scheme() == "file"
    }

    /// The location as shown in messages and views: never with credentials.
    pub fn display(&self) -> String {
        if self.is_local_file() {
            if let Ok(p) = self.url.to_file_path() {
                return p.to_string_lossy().trim_end_matches('/').to_string();
            }
        }
        mask(self.url.as_str())
    }

    /// When the Delta log's commit for `version` was written (its file's modification time, µs
    /// since the Unix epoch; 0 when the file system does not say), or None when there is no
    /// such commit: one file check, no listing — what the background worker asks of a table at
    /// every poll. Err when it cannot tell (not a local path, an I/O error).
    pub fn commit_time(&self, version: i64) -> std::result::Result<Option<i64>, ()> {
        if self.access.is_some() {
            let meta = self.head(&format!("_delta_log/{version:020}.json"))?;
            return Ok(meta.map(|m| m.last_modified.timestamp_micros()));
        }
        let dir = self.url.to_file_path()?;
        match std::fs::metadata(dir.join("_delta_log").join(format!("{version:020}.json"))) {
            Ok(m) => Ok(Some(
                m.modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_micros() as i64),
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(_) => Err(()),
        }
    }

    /// Whether the Delta log has a commit for `version` (None: cannot tell).
    pub fn has_commit(&self, version: i64) -> Option<bool> {
        self.commit_time(version).ok().map(|t| t.is_some())
    }

    /// The version of the log's last checkpoint, as `_delta_log/_last_checkpoint` says (None:
    /// none, or cannot tell): where the log goes on when older commit files are cleaned up.
    pub fn checkpoint_version(&self) -> Option<i64> {
        let text = if self.access.is_some() {
            // A few hundred bytes; anything larger is not a checkpoint pointer.
            let bytes = self
                .remote(
                    |store, path| async move {
                        let meta = store.head(&path).await?;
                        if meta.size > MAX_LAST_CHECKPOINT {
                            return Err(object_store::Error::Generic {
                                store: "lakesync",
                                source: "_last_checkpoint too large".into(),
                            });
                        }
                        store.get_range(&path, 0..meta.size).await
                    },
                    "_delta_log/_last_checkpoint",
                )
                .ok()?;
            String::from_utf8(bytes.to_vec()).ok()?
        } else {
            let dir = self.url.to_file_path().ok()?;
            std::fs::read_to_string(dir.join("_delta_log").join("_last_checkpoint")).ok()?
        };
        serde_json::from_str::<serde_json::Value>(&text)
            .ok()?
            .get("version")?
            .as_i64()
    }

    /// The newest version in the log, found from `known` (a version that exists, or -1) by
    /// checking single commit files — doubling steps forward, then halving back — so a log
    /// that is n versions ahead costs about 2·log2(n) checks and one that is not, one.
    pub fn latest_commit(&self, known: i64) -> Option<i64> {
        let (mut lo, mut step) = (known, 1i64);
        // A store that says every version exists (a hostile endpoint) is given up on after
        // 2^40 versions, not followed into overflow.
        let mut steps = 0;
        let mut hi = loop {
            steps += 1;
            let v = lo.checked_add(step)?;
            if steps > 40 {
                return None;
            }
            if self.has_commit(v)? {
                lo = v;
                step = step.saturating_mul(2);
            } else {
                break v;
            }
        };
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if self.has_commit(mid)? {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Some(lo)
    }

    /// An object's metadata under the table's root on its object store (None: no such object).
    fn head(&self, name: &str) -> std::result::Result<Option<object_store::ObjectMeta>, ()> {
        match self.remote(|store, path| async move { store.head(&path).await }, name) {
            Ok(m) => Ok(Some(m)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(_) => Err(()),
        }
    }

    /// Runs one request for object `name` under the table's root, on the I/O runtime, giving up
    /// after [`PROBE_TIMEOUT`] (the scheduler waits for it between polls).
    fn remote<T, F, Fut>(&self, f: F, name: &str) -> object_store::Result<T>
    where
        F: FnOnce(Arc<dyn ObjectStore>, object_store::path::Path) -> Fut,
        Fut: std::future::Future<Output = object_store::Result<T>>,
    {
        let store = self
            .probe_store()
            .ok_or_else(|| object_store::Error::Generic {
                store: "lakesync",
                source: "no store".into(),
            })?;
        let path = object_store::path::Path::from_url_path(format!("{}{name}", self.url.path()))?;
        // Each request waits at most PROBE_TIMEOUT, and all of one look together no longer
        // than the look's deadline (see `probe_deadline`).
        let now = std::time::Instant::now();
        let left = PROBE_DEADLINE
            .get()
            .map_or(PROBE_TIMEOUT, |d| d.saturating_duration_since(now));
        let wait = left.min(PROBE_TIMEOUT);
        let rt = crate::source::runtime();
        rt.block_on(async {
            match tokio::time::timeout(wait, f(store, path)).await {
                Ok(r) => r,
                Err(_) => Err(object_store::Error::Generic {
                    store: "lakesync",
                    source: "timed out".into(),
                }),
            }
        })
    }

    /// The store to look at the log with, built once per bucket and credential options (the
    /// scheduler looks at every poll; building one makes an HTTP client).
    fn probe_store(&self) -> Option<Arc<dyn ObjectStore>> {
        type Cache = Vec<(String, Vec<(String, String)>, Arc<dyn ObjectStore>)>;
        static CACHE: std::sync::Mutex<Cache> = std::sync::Mutex::new(Vec::new());
        let access = self.access.as_ref()?;
        let bucket = format!(
            "{}://{}@{} {}",
            self.url.scheme(),
            self.url.username(),
            self.url.host_str().unwrap_or_default(),
            access.use_environment
        );
        let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, _, store)) = cache
            .iter()
            .find(|(b, o, _)| *b == bucket && *o == access.options)
        {
            return Some(store.clone());
        }
        let store = access.build(&self.url, &self.display()).ok()?;
        if cache.len() >= 256 {
            cache.clear();
        }
        cache.push((bucket, access.options.clone(), store.clone()));
        Some(store)
    }

    /// Fails fast, with a precise message, when a local table is not there.
    pub fn check_exists(&self) -> Result<()> {
        if !self.is_local_file() {
            return Ok(());
        }
        let path = self.url.to_file_path().map_err(|_| {
            LakeError::invalid(format!("\"{}\" is not a file path", self.display()))
        })?;
        match std::fs::metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(LakeError::SourceNotFound(self.display()))
            }
            Err(e) => Err(LakeError::Delta {
                source: self.display(),
                detail: e.to_string(),
            }),
            Ok(m) if !m.is_dir() => Err(LakeError::NotDeltaTable(self.display())),
            Ok(_) if !path.join("_delta_log").is_dir() => {
                Err(LakeError::NotDeltaTable(self.display()))
            }
            Ok(_) => Ok(()),
        }
    }

    /// Reading server files needs what COPY FROM a file needs: superuser or
    /// pg_read_server_files. Runs in the backend.
    pub fn check_access(&self) -> Result<()> {
        if !self.is_local_file() {
            return Ok(());
        }
        let allowed = unsafe {
            pg_sys::superuser()
                || pg_sys::has_privs_of_role(
                    pg_sys::GetUserId(),
                    pg_sys::Oid::from(pg_sys::ROLE_PG_READ_SERVER_FILES),
                )
        };
        if allowed {
            Ok(())
        } else {
            Err(LakeError::Permission {
                message: format!(
                    "permission denied to read Delta table \"{}\" from the server's file system",
                    self.display()
                ),
                hint: Some(
                    "Only roles with privileges of the \"pg_read_server_files\" role may sync from \
                     a server file path, as for COPY FROM a file."
                        .into(),
                ),
            })
        }
    }
}

/// Hides the password of a URI (`scheme://user:secret@host` → `scheme://user:***@host`) and any
/// query string, where signatures and tokens live.
pub fn mask(s: &str) -> String {
    match Url::parse(s) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            if u.query().is_some() {
                u.set_query(Some("***"));
            }
            u.to_string()
        }
        Err(_) => s.to_string(),
    }
}
