//! Amazon S3 and S3-compatible stores (MinIO, moto, R2, ...).

use super::Class;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey as K};
use object_store::{ObjectStore, RetryConfig};
use std::str::FromStr;
use std::sync::Arc;

/// The canonical name and class of `key`; None when it is not an option a credential may set.
pub fn classify(key: &str) -> Option<(String, Class)> {
    let k = K::from_str(key).ok()?;
    let class = match &k {
        K::SecretAccessKey | K::Token => Class::Secret,
        K::Encryption(e) if e.as_ref() == "aws_sse_customer_key_base64" => Class::Secret,
        // The server's identity: instance metadata, container credentials, web identity files.
        K::ImdsV1Fallback
        | K::MetadataEndpoint
        | K::ContainerCredentialsRelativeUri
        | K::ContainerCredentialsFullUri
        | K::ContainerAuthorizationTokenFile
        | K::WebIdentityTokenFile
        | K::RoleArn
        | K::RoleSessionName
        | K::StsEndpoint => Class::Ambient,
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
    (super::has(options, "aws_access_key_id") && super::has(options, "aws_secret_access_key"))
        || super::is_true(options, "aws_skip_signature")
}

pub fn build(
    url: &url::Url,
    options: &[(String, String)],
    use_environment: bool,
    retry: RetryConfig,
) -> object_store::Result<Arc<dyn ObjectStore>> {
    build_store!(AmazonS3Builder, K, url, options, use_environment, retry)
}
