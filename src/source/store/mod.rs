//! Object stores: which provider a source URL names, which options a credential may give it
//! (and which of them are secret), and the store built from them.
//!
//! Each provider module lists object_store's configuration keys in three classes: plain
//! (region, endpoint, account name: shown in `lakesync.credentials`), secret (keys, tokens:
//! stored apart, never shown, masked in every message) and ambient (the server's own identity:
//! instance metadata, credential files, the Azure CLI — only with `"use_environment": true`).
//! Keys object_store does not know are refused, so a typo never silently falls back to the
//! server's identity.

/// A provider's store from its builder: the server's environment first only with
/// `use_environment`, then the source URL (bucket, container, account), the retries, and the
/// credential's options (canonical names, so parsing them again cannot fail).
macro_rules! build_store {
    ($builder:ty, $key:ty, $url:expr, $options:expr, $use_environment:expr, $retry:expr) => {{
        let mut b = if $use_environment {
            <$builder>::from_env()
        } else {
            <$builder>::new()
        };
        b = b.with_url($url.as_str()).with_retry($retry);
        for (k, v) in $options {
            b = b.with_config(<$key as std::str::FromStr>::from_str(k)?, v);
        }
        Ok(std::sync::Arc::new(b.build()?) as std::sync::Arc<dyn object_store::ObjectStore>)
    }};
}

pub mod azure;
pub mod gcs;
pub mod mapped;
pub mod ordered;
pub mod s3;

use crate::error::{LakeError, Result};
use object_store::{ObjectStore, RetryConfig};
use std::sync::Arc;
use std::time::Duration;
use url::Url;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    S3,
    Azure,
    Gcs,
}

impl Provider {
    pub fn parse(s: &str) -> Result<Provider> {
        match s.trim().to_ascii_lowercase().as_str() {
            "s3" | "aws" => Ok(Provider::S3),
            "azure" | "az" => Ok(Provider::Azure),
            "gcs" | "gs" | "google" => Ok(Provider::Gcs),
            other => Err(LakeError::invalid_with_hint(
                format!("unknown object store provider \"{other}\""),
                "Use 's3' (AWS S3 and S3-compatible stores), 'azure' (Blob Storage, ADLS Gen2) or 'gcs'.",
            )),
        }
    }

    /// The provider of a source URL's scheme, if it is an object store.
    pub fn of_scheme(scheme: &str) -> Option<Provider> {
        match scheme {
            "s3" | "s3a" => Some(Provider::S3),
            "az" | "abfs" | "abfss" | "adl" | "azure" => Some(Provider::Azure),
            "gs" => Some(Provider::Gcs),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Provider::S3 => "s3",
            Provider::Azure => "azure",
            Provider::Gcs => "gcs",
        }
    }
}

/// How a credential option is kept and shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Shown in `lakesync.credentials`.
    Plain,
    /// Stored apart from the plain options; never shown; masked in messages.
    Secret,
    /// Reaches the server's own identity or files: only with `"use_environment": true`.
    Ambient,
}

/// Options of ours, not object_store's: how long and how often a request is retried.
pub const MAX_RETRIES: &str = "max_retries";
pub const RETRY_TIMEOUT: &str = "retry_timeout";

/// The canonical name and class of credential option `key` of `provider`.
pub fn classify(provider: Provider, key: &str) -> Result<(String, Class)> {
    if key == MAX_RETRIES || key == RETRY_TIMEOUT {
        return Ok((key.to_string(), Class::Plain));
    }
    let found = match provider {
        Provider::S3 => s3::classify(key),
        Provider::Azure => azure::classify(key),
        Provider::Gcs => gcs::classify(key),
    };
    found.ok_or_else(|| {
        LakeError::invalid_with_hint(
            format!(
                "\"{key}\" is not an option of {} credentials",
                provider.as_str()
            ),
            match provider {
                Provider::S3 => "S3 options are object_store's: access_key_id, secret_access_key, session_token, region, endpoint, virtual_hosted_style_request, skip_signature, allow_http, timeout, connect_timeout, ...",
                Provider::Azure => "Azure options are object_store's: account_name, account_key, sas_token, bearer_token, client_id, client_secret, tenant_id, endpoint, use_emulator, skip_signature, allow_http, timeout, ...",
                Provider::Gcs => "GCS options are object_store's: service_account_key (the key's JSON), base_url, skip_signature, allow_http, timeout, ...",
            },
        )
    })
}

/// What a sync needs to reach a source on an object store: the provider's options (secret ones
/// included, canonical names) of the credential the spec named or its scope matched.
#[derive(Clone)]
pub struct StoreAccess {
    pub provider: Provider,
    /// The credential these options came from (for `sync_runs`), None without one.
    pub credential: Option<String>,
    pub options: Vec<(String, String)>,
    pub use_environment: bool,
}

impl std::fmt::Debug for StoreAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the options: they hold secrets.
        f.debug_struct("StoreAccess")
            .field("provider", &self.provider)
            .field("credential", &self.credential)
            .finish_non_exhaustive()
    }
}

/// Retries of a failed request. object_store's default is 10 over up to 3 minutes, which holds
/// a sync (and its locks) that long when a store is down; its request timeouts (30 s, connect
/// 5 s) are kept. Options `max_retries`, `retry_timeout`, `timeout` and `connect_timeout` change them.
const DEFAULT_MAX_RETRIES: usize = 3;
const MAX_MAX_RETRIES: usize = 20;
const MAX_RETRY_TIMEOUT: Duration = Duration::from_secs(600);
const DEFAULT_RETRY_TIMEOUT: Duration = Duration::from_secs(30);

impl StoreAccess {
    fn get(&self, key: &str) -> Option<&str> {
        self.options
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn retry(&self) -> Result<RetryConfig> {
        let max_retries = match self.get(MAX_RETRIES) {
            None => DEFAULT_MAX_RETRIES,
            Some(v) => v.parse().map_err(|_| {
                LakeError::invalid(format!(
                    "option \"{MAX_RETRIES}\" must be a whole number, not \"{v}\""
                ))
            })?,
        };
        let retry_timeout = match self.get(RETRY_TIMEOUT) {
            None => DEFAULT_RETRY_TIMEOUT,
            Some(v) => parse_duration(v).ok_or_else(|| {
                LakeError::invalid(format!(
                    "option \"{RETRY_TIMEOUT}\" must be a duration such as \"30s\", not \"{v}\""
                ))
            })?,
        };
        // Bounded: a sync holds its table's sync lock while it waits.
        for key in ["timeout", "connect_timeout"] {
            if let Some(v) = self.get(key) {
                let d = parse_duration(v).ok_or_else(|| {
                    LakeError::invalid(format!(
                        "option \"{key}\" must be a duration such as \"30s\" or \"500ms\", not \"{v}\""
                    ))
                })?;
                if d > MAX_RETRY_TIMEOUT {
                    return Err(LakeError::invalid(format!(
                        "option \"{key}\" may be at most {} s",
                        MAX_RETRY_TIMEOUT.as_secs()
                    )));
                }
            }
        }
        if max_retries > MAX_MAX_RETRIES || retry_timeout > MAX_RETRY_TIMEOUT {
            return Err(LakeError::invalid(format!(
                "options \"{MAX_RETRIES}\" and \"{RETRY_TIMEOUT}\" may be at most {MAX_MAX_RETRIES} and {} s",
                MAX_RETRY_TIMEOUT.as_secs()
            )));
        }
        Ok(RetryConfig {
            max_retries,
            retry_timeout,
            ..RetryConfig::default()
        })
    }

    /// object_store's options: ours (retries) left out.
    fn store_options(&self) -> Vec<(String, String)> {
        self.options
            .iter()
            .filter(|(k, _)| k != MAX_RETRIES && k != RETRY_TIMEOUT)
            .cloned()
            .collect()
    }

    /// The store holding the table at `url` (the bucket or container; the kernel finds objects
    /// by the URL's path).
    pub fn build(&self, url: &Url, display: &str) -> Result<Arc<dyn ObjectStore>> {
        let options = self.store_options();
        let retry = self.retry()?;
        let built = match self.provider {
            Provider::S3 => s3::build(url, &options, self.use_environment, retry),
            Provider::Azure => azure::build(url, &options, self.use_environment, retry),
            Provider::Gcs => gcs::build(url, &options, self.use_environment, retry),
        };
        built.map(|store| Arc::new(ordered::Ordered(store)) as Arc<dyn ObjectStore>).map_err(|e| LakeError::invalid_with_hint(
            format!("cannot reach Delta table \"{display}\": {e}"),
            match &self.credential {
                Some(c) => format!("Check the options of credential \"{c}\" (lakesync.credentials shows them) with alter_credential()."),
                None => "Name a credential in the synced table's options: {\"credential\": \"name\"}.".to_string(),
            },
        ))
    }
}

/// `30s`, `500ms`, `2m`, `1h` or a number of seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => (&s[..i], s[i..].trim()),
        None => (s, "s"),
    };
    let n: f64 = num.parse().ok()?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "sec" | "secs" | "seconds" => n,
        "m" | "min" | "minutes" => n * 60.0,
        "h" | "hours" => n * 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(secs).ok()
}

/// Whether option `key` is set to true (object_store reads "true"/"false" and a few more).
pub fn is_true(options: &[(String, String)], key: &str) -> bool {
    options.iter().any(|(k, v)| {
        k == key && matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes" | "on")
    })
}

pub fn has(options: &[(String, String)], key: &str) -> bool {
    options.iter().any(|(k, _)| k == key)
}
