//! Credentials for object-store sources: `create_credential`, `alter_credential`,
//! `drop_credential`, and the credential a sync uses.
//!
//! A credential belongs to the role that created it (`owner`): only that role's synced tables
//! use it, by name (`{"credential": "name"}`) or by scope (the most specific URL prefix of the
//! owner's credentials that covers the source). Rows live in `lakesync.stored_credentials`,
//! which no role but the catalog's owner may read; `lakesync.credentials` shows everything but
//! the secrets. Secret values go into SQL only as parameters and are masked in every message
//! (`error::register_secrets`).

use crate::catalog::{self, as_catalog_owner};
use crate::error::{LakeError, Result};
use crate::source::location::SourceLocation;
use crate::source::store::{self, Class, Provider, StoreAccess};
use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::{Map, Value};
use std::sync::Arc;

/// The role whose members may let a credential use the server's own identity.
pub const SERVER_CREDENTIALS_ROLE: &str = "lakesync_use_server_credentials";

/// Options of ours in a credential, beside the provider's.
const USE_ENVIRONMENT: &str = "use_environment";
const SCOPE: &str = "scope";

fn spi_err(e: pgrx::spi::Error) -> LakeError {
    LakeError::Internal(format!("credential catalog access failed: {e}"))
}

/// The first column of the first row a statement returns, None when it returns no row (pgrx's
/// `Spi::get_one*` fail then).
fn first<T: pgrx::datum::FromDatum + pgrx::datum::IntoDatum>(
    sql: &str,
    args: &[pgrx::datum::DatumWithOid],
) -> Result<Option<T>> {
    Spi::connect_mut(|c| {
        let rows = c.update(sql, Some(1), args)?;
        if let Some(row) = rows.into_iter().next() {
            return row.get::<T>(1);
        }
        Ok(None)
    })
    .map_err(spi_err)
}

/// A credential's options, sorted into what is shown and what is kept secret.
#[derive(Default)]
struct Parsed {
    plain: Map<String, Value>,
    secrets: Map<String, Value>,
    scope: Option<String>,
    use_environment: bool,
}

impl Parsed {
    fn all(&self) -> Vec<(String, String)> {
        self.plain
            .iter()
            .chain(self.secrets.iter())
            .map(|(k, v)| (k.clone(), value_text(v)))
            .collect()
    }
}

/// An option's value as object_store takes it: strings as they are, anything else (a service
/// account key given as a JSON object, a boolean, a number) as JSON text.
fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn check_name(name: &str) -> Result<()> {
    if name.trim().is_empty() || name.chars().any(char::is_control) {
        return Err(LakeError::invalid(
            "a credential name must be non-empty text without control characters",
        ));
    }
    Ok(())
}

/// Sorts `options` (a JSON object) into plain and secret options under object_store's
/// canonical names, starting from `base` (alter: the stored ones; a JSON null removes one).
fn parse(provider: Provider, options: &Value, base: Parsed) -> Result<Parsed> {
    let obj = match options {
        Value::Object(o) => o,
        Value::Null => return Ok(base),
        _ => {
            return Err(LakeError::invalid(
                "credential options must be a JSON object",
            ))
        }
    };
    let mut p = base;
    // Secret values are masked from here on, also in errors about the other options.
    for (key, value) in obj {
        if let Ok((_, Class::Secret)) = store::classify(provider, key) {
            register_secret(value);
        }
    }
    for (key, value) in obj {
        match key.as_str() {
            USE_ENVIRONMENT => {
                p.use_environment = match value {
                    Value::Bool(b) => *b,
                    Value::Null => false,
                    _ => {
                        return Err(LakeError::invalid(
                            "option \"use_environment\" must be true or false",
                        ))
                    }
                }
            }
            SCOPE => {
                p.scope = match value {
                    Value::Null => None,
                    Value::String(s) => Some(normalize_scope(provider, s)?),
                    _ => return Err(LakeError::invalid("option \"scope\" must be a URL prefix")),
                }
            }
            _ => {
                let (canonical, class) = store::classify(provider, key)?;
                p.plain.remove(&canonical);
                p.secrets.remove(&canonical);
                if value.is_null() {
                    continue;
                }
                if class == Class::Ambient && !obj_use_environment(obj, &p) {
                    return Err(LakeError::Permission {
                        message: format!(
                            "option \"{key}\" uses the database server's own identity or files"
                        ),
                        hint: Some(format!(
                            "Set \"use_environment\": true as well; that needs superuser or membership in role \"{SERVER_CREDENTIALS_ROLE}\"."
                        )),
                    });
                }
                match class {
                    Class::Secret => p.secrets.insert(canonical, value.clone()),
                    _ => p.plain.insert(canonical, value.clone()),
                };
            }
        }
    }
    Ok(p)
}

/// Masks a secret value in later messages: a string, or every string in a JSON key file (its
/// private key among them) and the file's text as object_store is given it.
fn register_secret(value: &Value) {
    match value {
        Value::String(s) => {
            // As given, and as JSON writes it (a key file's private key has escaped newlines).
            let escaped = serde_json::to_string(s).unwrap_or_default();
            let mut forms = vec![s.clone(), escaped.trim_matches('"').to_string()];
            // A SAS token's signature, as object_store decodes it (its other fields — dates,
            // permissions — are not secret, and masking them would mangle ordinary messages).
            for (k, v) in url::form_urlencoded::parse(s.trim_start_matches('?').as_bytes()) {
                if k == "sig" {
                    forms.push(v.into_owned());
                }
            }
            crate::error::register_secrets(forms.iter().map(String::as_str));
            // A key file given as JSON text: its fields too (the private key).
            if let Ok(v @ Value::Object(_)) = serde_json::from_str::<Value>(s) {
                register_secret(&v);
            }
        }
        Value::Object(m) => {
            // A key file: the whole text object_store is given, and its secret fields (not its
            // project, e-mail or URLs, which would mask ordinary words).
            crate::error::register_secrets([value.to_string().as_str()]);
            for (k, v) in m {
                if [
                    "private_key",
                    "private_key_id",
                    "client_secret",
                    "refresh_token",
                ]
                .contains(&k.as_str())
                {
                    register_secret(v);
                }
            }
        }
        _ => {}
    }
}

fn obj_use_environment(obj: &Map<String, Value>, p: &Parsed) -> bool {
    match obj.get(USE_ENVIRONMENT) {
        Some(Value::Bool(b)) => *b,
        _ => p.use_environment,
    }
}

/// A scope as the sources it covers are written: a directory URL of the credential's provider.
fn normalize_scope(provider: Provider, s: &str) -> Result<String> {
    let loc = SourceLocation::parse(s)?;
    if loc.provider() != Some(provider) {
        return Err(LakeError::invalid(format!(
            "scope \"{}\" is not a {} URL",
            loc.display(),
            provider.as_str()
        )));
    }
    Ok(loc.url.to_string())
}

/// What a credential must say before it is stored: how to sign requests (or that it reaches
/// the server's identity, for who may), and option values object_store accepts.
fn validate(provider: Provider, p: &Parsed, role: &str) -> Result<()> {
    if p.use_environment {
        check_may_use_server_identity(role)?;
    } else {
        refuse_ambient(provider, p)?;
        let all = p.all();
        let own = match provider {
            Provider::S3 => store::s3::has_own_identity(&all),
            Provider::Azure => store::azure::has_own_identity(&all),
            Provider::Gcs => store::gcs::has_own_identity(&all),
        };
        if !own {
            return Err(LakeError::invalid_with_hint(
                format!("the options give no key to sign {} requests with", provider.as_str()),
                match provider {
                    Provider::S3 => "Give access_key_id and secret_access_key (and session_token for temporary keys), or skip_signature: true for a public bucket, or use_environment: true for the server's own identity.",
                    Provider::Azure => "Give account_key, sas_token, bearer_token, or client_id, client_secret and tenant_id, or use_emulator: true, or skip_signature: true, or use_environment: true for the server's own identity.",
                    Provider::Gcs => "Give service_account_key (the key file's JSON), or skip_signature: true for a public bucket, or use_environment: true for the server's own identity.",
                },
            ));
        }
    }
    // Option values (booleans, durations, URLs) are checked by building a store once.
    let probe = match provider {
        Provider::S3 => "s3://lakesync-probe/",
        Provider::Azure => "abfss://probe@lakesyncprobe.dfs.core.windows.net/",
        Provider::Gcs => "gs://lakesync-probe/",
    };
    let access = StoreAccess {
        provider,
        credential: None,
        options: p.all(),
        use_environment: false,
    };
    let url = url::Url::parse(probe).expect("probe URL");
    if let Err(e) = access.build(&url, "") {
        let text = match e {
            LakeError::InvalidParameter { message, .. } => message,
            other => other.to_string(),
        };
        let detail = text.split_once(": ").map_or(text.as_str(), |(_, d)| d);
        return Err(LakeError::invalid(format!(
            "invalid {} credential options: {detail}",
            provider.as_str()
        )));
    }
    Ok(())
}

/// Without `use_environment`, no stored option may reach the server's identity or files —
/// also one stored while it was on (object_store would pick such a provider before the keys).
fn refuse_ambient(provider: Provider, p: &Parsed) -> Result<()> {
    for key in p.plain.keys().chain(p.secrets.keys()) {
        if let Ok((_, Class::Ambient)) = store::classify(provider, key) {
            return Err(LakeError::Permission {
                message: format!(
                    "option \"{key}\" uses the database server's own identity or files"
                ),
                hint: Some(format!(
                    "Set \"use_environment\": true as well; that needs superuser or membership in role \"{SERVER_CREDENTIALS_ROLE}\". Or remove it: {{\"{key}\": null}}."
                )),
            });
        }
    }
    Ok(())
}

/// Using the server's own identity needs superuser or the role made for it.
fn check_may_use_server_identity(role: &str) -> Result<()> {
    let allowed = unsafe {
        let c = std::ffi::CString::new(role).map_err(|_| LakeError::invalid("role name"))?;
        let roleid = pg_sys::get_role_oid(c.as_ptr(), true);
        let server = std::ffi::CString::new(SERVER_CREDENTIALS_ROLE).expect("role name");
        let granted = pg_sys::get_role_oid(server.as_ptr(), true);
        roleid != pg_sys::InvalidOid
            && (pg_sys::superuser_arg(roleid)
                || (granted != pg_sys::InvalidOid && pg_sys::has_privs_of_role(roleid, granted)))
    };
    if allowed {
        return Ok(());
    }
    Err(LakeError::Permission {
        message: format!(
            "role \"{role}\" may not use the database server's own cloud identity (\"use_environment\")"
        ),
        hint: Some(format!(
            "A superuser can GRANT {SERVER_CREDENTIALS_ROLE} TO \"{role}\"; or give the credential keys of its own."
        )),
    })
}

/// `create_credential(name, provider, options)`.
pub fn create(name: &str, provider: &str, options: &Value) -> Result<()> {
    check_name(name)?;
    let provider = Provider::parse(provider)?;
    let p = parse(provider, options, Parsed::default())?;
    let owner = catalog::current_role_name();
    validate(provider, &p, &owner)?;
    crate::session::with_safe_search_path(|| {
        as_catalog_owner(|| {
            let inserted = first::<bool>(
                "INSERT INTO lakesync.stored_credentials \
                   (owner, name, provider, options, secrets, scope, use_environment) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (owner, name) DO NOTHING RETURNING true",
                &[
                    owner.as_str().into(),
                    name.into(),
                    provider.as_str().into(),
                    JsonB(Value::Object(p.plain.clone())).into(),
                    JsonB(Value::Object(p.secrets.clone())).into(),
                    p.scope.clone().into(),
                    p.use_environment.into(),
                ],
            )?;
            if inserted != Some(true) {
                return Err(LakeError::CredentialExists(name.into()));
            }
            Ok(())
        })
    })
}

/// A stored credential of `owner` (all of it, secrets included).
struct Stored {
    provider: Provider,
    parsed: Parsed,
}

fn load(owner: &str, name: &str, lock: bool) -> Result<Option<Stored>> {
    let sql = format!(
        "SELECT provider, options, secrets, scope, use_environment \
           FROM lakesync.stored_credentials \
          WHERE owner OPERATOR(pg_catalog.=) $1 AND name OPERATOR(pg_catalog.=) $2{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    let row = Spi::connect_mut(|c| {
        let args = [owner.into(), name.into()];
        // Read-only unless locking: the scheduler reads with it at every poll.
        let rows = if lock {
            c.update(&sql, Some(1), &args)?
        } else {
            c.select(&sql, Some(1), &args)?
        };
        let mut out = None;
        for r in rows {
            out = Some((
                r.get::<String>(1)?.unwrap_or_default(),
                r.get::<JsonB>(2)?.map(|j| j.0),
                r.get::<JsonB>(3)?.map(|j| j.0),
                r.get::<String>(4)?,
                r.get::<bool>(5)?.unwrap_or(false),
            ));
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .map_err(spi_err)?;
    let Some((provider, plain, secrets, scope, use_environment)) = row else {
        return Ok(None);
    };
    let obj = |v: Option<Value>| match v {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    let parsed = Parsed {
        plain: obj(plain),
        secrets: obj(secrets),
        scope,
        use_environment,
    };
    parsed.secrets.values().for_each(register_secret);
    Ok(Some(Stored {
        provider: Provider::parse(&provider)?,
        parsed,
    }))
}

/// `alter_credential(name, options)`: the given options replace the stored ones of the same
/// name (a JSON null removes one); the others stay. Synced tables naming it use the new options
/// from their next sync on.
pub fn alter(name: &str, options: &Value) -> Result<()> {
    let owner = catalog::current_role_name();
    crate::session::with_safe_search_path(|| {
        as_catalog_owner(|| {
            let stored = load(&owner, name, true)?
                .ok_or_else(|| LakeError::UndefinedCredential(name.into()))?;
            let p = parse(stored.provider, options, stored.parsed)?;
            validate(stored.provider, &p, &owner)?;
            Spi::run_with_args(
                "UPDATE lakesync.stored_credentials \
                    SET options = $3, secrets = $4, scope = $5, use_environment = $6, \
                        updated_at = pg_catalog.now() \
                  WHERE owner OPERATOR(pg_catalog.=) $1 AND name OPERATOR(pg_catalog.=) $2",
                &[
                    owner.as_str().into(),
                    name.into(),
                    JsonB(Value::Object(p.plain)).into(),
                    JsonB(Value::Object(p.secrets)).into(),
                    p.scope.into(),
                    p.use_environment.into(),
                ],
            )
            .map_err(spi_err)
        })
    })
}

/// `drop_credential(name, if_exists)`: refused while a synced table of the owner names it.
pub fn drop(name: &str, if_exists: bool) -> Result<bool> {
    let owner = catalog::current_role_name();
    crate::session::with_safe_search_path(|| {
        as_catalog_owner(|| {
            let users = first::<String>(
                "SELECT pg_catalog.string_agg(pg_catalog.quote_literal(target), ', ' ORDER BY target) \
                   FROM lakesync.synced_tables \
                  WHERE owner OPERATOR(pg_catalog.=) $1 \
                    AND options OPERATOR(pg_catalog.->>) 'credential' OPERATOR(pg_catalog.=) $2",
                &[owner.as_str().into(), name.into()],
            )?;
            if let Some(tables) = users {
                return Err(LakeError::CredentialInUse {
                    name: name.into(),
                    tables,
                });
            }
            let dropped = first::<bool>(
                "DELETE FROM lakesync.stored_credentials \
                  WHERE owner OPERATOR(pg_catalog.=) $1 AND name OPERATOR(pg_catalog.=) $2 \
                 RETURNING true",
                &[owner.as_str().into(), name.into()],
            )?
            .unwrap_or(false);
            if !dropped && !if_exists {
                return Err(LakeError::UndefinedCredential(name.into()));
            }
            Ok(dropped)
        })
    })
}

/// The source of a synced table of `owner`, parsed, checked (server files need
/// pg_read_server_files) and, on an object store, with the credential it uses: the one its
/// options name, else the owner's credential whose scope covers it most specifically.
pub fn locate(source: &str, owner: &str, named: Option<&str>) -> Result<SourceLocation> {
    crate::record::set_credential_in_use(None);
    let mut location = SourceLocation::parse(source)?;
    location.check_access()?;
    let Some(provider) = location.provider() else {
        if let Some(name) = named {
            return Err(LakeError::invalid(format!(
                "credential \"{name}\" is for object stores; \"{}\" is a server path",
                location.display()
            )));
        }
        return Ok(location);
    };
    let chosen = match named {
        Some(name) => Some(name.to_string()),
        None => as_catalog_owner(|| scoped(owner, provider, &location))?,
    };
    let Some(name) = chosen else {
        return Err(LakeError::invalid_with_hint(
            format!(
                "Delta table \"{}\" is on an object store, and no credential of role \"{owner}\" is named or scoped for it",
                location.display()
            ),
            format!(
                "create_credential('name', '{}', '{{...}}'), then name it in the synced table's options ({{\"credential\": \"name\"}}) or give it a \"scope\" covering the source.",
                provider.as_str()
            ),
        ));
    };
    let stored = as_catalog_owner(|| load(owner, &name, false))?
        .ok_or_else(|| LakeError::UndefinedCredential(name.clone()))?;
    if stored.provider != provider {
        return Err(LakeError::invalid(format!(
            "credential \"{name}\" is for {}, but Delta table \"{}\" is on {}",
            stored.provider.as_str(),
            location.display(),
            provider.as_str()
        )));
    }
    if stored.parsed.use_environment {
        // Checked again at each use: the grant may have been revoked since.
        check_may_use_server_identity(owner)?;
    } else {
        refuse_ambient(provider, &stored.parsed)?;
    }
    crate::record::set_credential_in_use(Some(name.clone()));
    location.access = Some(Arc::new(StoreAccess {
        provider,
        credential: Some(name),
        options: stored.parsed.all(),
        use_environment: stored.parsed.use_environment,
    }));
    Ok(location)
}

/// The name of `owner`'s credential whose scope covers `location` most specifically.
fn scoped(owner: &str, provider: Provider, location: &SourceLocation) -> Result<Option<String>> {
    catalog::read_one::<String>(
        "SELECT (SELECT name FROM lakesync.stored_credentials \
          WHERE owner OPERATOR(pg_catalog.=) $1 AND provider OPERATOR(pg_catalog.=) $2 \
            AND scope IS NOT NULL AND pg_catalog.starts_with($3, scope) \
          ORDER BY pg_catalog.length(scope) DESC, name LIMIT 1)",
        &[
            owner.into(),
            provider.as_str().into(),
            location.url.as_str().into(),
        ],
    )
    .map_err(spi_err)
}

/// The access the scheduler looks at an object-store source's log with: the credential the
/// owner's sync would use, read with read-only queries (the scheduler is a superuser, and its
/// polls write nothing). None for server paths and when there is no usable credential.
pub fn watch_access(source: &str, owner: &str, named: Option<&str>) -> Option<Arc<StoreAccess>> {
    let location = SourceLocation::parse(source).ok()?;
    let provider = location.provider()?;
    let name = match named {
        Some(n) => n.to_string(),
        None => scoped(owner, provider, &location).ok()??,
    };
    let stored = load(owner, &name, false).ok()??;
    let allowed = if stored.parsed.use_environment {
        check_may_use_server_identity(owner)
    } else {
        refuse_ambient(provider, &stored.parsed)
    };
    if stored.provider != provider || allowed.is_err() {
        return None;
    }
    Some(Arc::new(StoreAccess {
        provider,
        credential: Some(name),
        options: stored.parsed.all(),
        use_environment: stored.parsed.use_environment,
    }))
}
