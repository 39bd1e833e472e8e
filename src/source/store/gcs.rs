//! Google Cloud Storage (`gs://bucket/path`).

use super::Class;
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey as K};
use object_store::{ObjectStore, RetryConfig};
use std::str::FromStr;
use std::sync::Arc;

/// The canonical name and class of `key`; None when it is not an option a credential may set.
pub fn classify(key: &str) -> Option<(String, Class)> {
    let k = K::from_str(key).ok()?;
    let class = match &k {
        K::ServiceAccountKey => Class::Secret,
        // Paths of credential files on the server.
        K::ServiceAccount | K::ApplicationCredentials => Class::Ambient,
        // A proxy URL can carry a password.
        K::Client(c) if c.as_ref() == "proxy_url" => Class::Secret,
        // The bucket is the source URL's.
        K::Bucket => return None,
        _ => Class::Plain,
    };
    Some((k.as_ref().to_string(), class))
}

/// Whether `options` say how to sign requests without the server's identity.
pub fn has_own_identity(options: &[(String, String)]) -> bool {
    super::has(options, "google_service_account_key")
        || super::is_true(options, "google_skip_signature")
}

pub fn build(
    url: &url::Url,
    options: &[(String, String)],
    use_environment: bool,
    retry: RetryConfig,
) -> object_store::Result<Arc<dyn ObjectStore>> {
    build_store!(
        GoogleCloudStorageBuilder,
        K,
        url,
        options,
        use_environment,
        retry
    )
}
