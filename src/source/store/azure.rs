//! Azure Blob Storage and ADLS Gen2 (`az://container/path`,
//! `abfss://container@account.dfs.core.windows.net/path`).

use super::Class;
use object_store::azure::{AzureConfigKey as K, MicrosoftAzureBuilder};
use object_store::{ObjectStore, RetryConfig};
use std::str::FromStr;
use std::sync::Arc;

/// The canonical name and class of `key`; None when it is not an option a credential may set.
pub fn classify(key: &str) -> Option<(String, Class)> {
    let k = K::from_str(key).ok()?;
    let class = match &k {
        K::AccessKey | K::ClientSecret | K::SasKey | K::Token | K::FabricSessionToken => {
            Class::Secret
        }
        // The server's identity: managed identity, federated token files, the Azure CLI.
        K::MsiEndpoint
        | K::ObjectId
        | K::MsiResourceId
        | K::FederatedTokenFile
        | K::UseAzureCli
        | K::FabricTokenServiceUrl
        | K::FabricWorkloadHost
        | K::FabricClusterIdentifier => Class::Ambient,
        // A proxy URL can carry a password.
        K::Client(c) if c.as_ref() == "proxy_url" => Class::Secret,
        // The container is the source URL's.
        K::ContainerName => return None,
        _ => Class::Plain,
    };
    Some((k.as_ref().to_string(), class))
}

/// Whether `options` say how to sign requests without the server's identity.
pub fn has_own_identity(options: &[(String, String)]) -> bool {
    let has = |k| super::has(options, k);
    has("azure_storage_account_key")
        || has("azure_storage_sas_key")
        || has("azure_storage_token")
        || (has("azure_storage_client_secret")
            && has("azure_storage_client_id")
            && has("azure_storage_tenant_id"))
        || super::is_true(options, "azure_storage_use_emulator")
        || super::is_true(options, "azure_skip_signature")
}

pub fn build(
    url: &url::Url,
    options: &[(String, String)],
    use_environment: bool,
    retry: RetryConfig,
) -> object_store::Result<Arc<dyn ObjectStore>> {
    build_store!(
        MicrosoftAzureBuilder,
        K,
        url,
        options,
        use_environment,
        retry
    )
}
