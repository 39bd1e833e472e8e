//! The specs in `lakesync.synced_tables`. Every statement is schema-qualified.
//!
//! PUBLIC may only SELECT the catalog (row security shows each role its own rows); it is
//! written only here, through the extension's functions: [`as_catalog_owner`] runs a write as
//! the role that owns the catalog, and each write names the calling role as the spec's owner or
//! matches only specs the caller owns (superusers: all), the same rows row security shows it.

use crate::error::{LakeError, Result};
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::{JsonB, PgTryBuilder};

/// Where a synced table stands (`synced_tables.state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Created; its first sync has not committed.
    New,
    Synced,
    /// The last sync failed; the next one retries.
    Failed,
    /// Only a full refresh can continue (a gap, a lossy schema change).
    NeedsFullRefresh,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::New => "new",
            State::Synced => "synced",
            State::Failed => "failed",
            State::NeedsFullRefresh => "needs_full_refresh",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "new" => State::New,
            "synced" => State::Synced,
            "failed" => State::Failed,
            "needs_full_refresh" => State::NeedsFullRefresh,
            other => {
                return Err(LakeError::Internal(format!(
                    "unknown state \"{other}\" in lakesync.synced_tables"
                )))
            }
        })
    }
}

#[derive(Debug, Clone)]
pub struct Spec {
    pub target: String,
    pub source: String,
    pub mode: String,
    pub primary_key: Vec<String>,
    pub options: serde_json::Value,
    pub state: State,
    pub synced_version: Option<i64>,
    /// The Delta table id the synced version belongs to.
    pub delta_table_id: Option<String>,
    /// The target columns syncs write (None: every column but generated ones).
    pub synced_columns: Option<Vec<String>>,
    /// The role the spec belongs to: its runs and failures are recorded as this role's, even
    /// when a superuser syncs it.
    pub owner: String,
    /// The table the spec's target named at its last sync (a rename follows it).
    pub target_relid: Option<pg_sys::Oid>,
}

fn spi_err(e: pgrx::spi::Error) -> LakeError {
    LakeError::Internal(format!("catalog access failed: {e}"))
}

/// The role a sync runs for: the current user (after SET ROLE / SECURITY DEFINER, as COPY
/// checks privileges).
#[derive(Clone)]
pub struct Caller {
    pub name: String,
    pub superuser: bool,
}

pub fn caller() -> Caller {
    Caller {
        name: current_role_name(),
        superuser: unsafe { pg_sys::superuser() },
    }
}

pub fn current_role_name() -> String {
    unsafe {
        let p = pg_sys::GetUserNameFromId(pg_sys::GetUserId(), false);
        std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}

/// The rows of the catalog a caller may act on: its own, or all for a superuser (what row
/// security shows it). `$2` is the caller's name, `$3` whether it is a superuser.
const OWN_ROWS: &str = "(owner OPERATOR(pg_catalog.=) $2 OR $3)";

/// The first row's first column of a read-only query. pgrx's `Spi::get_one*` run as updates,
/// which assign a transaction ID: an error on a hot standby, and a commit record (a WAL flush)
/// for every read of the background worker's polls.
pub fn read_one<T: pgrx::datum::FromDatum + pgrx::datum::IntoDatum>(
    sql: &str,
    args: &[pgrx::datum::DatumWithOid],
) -> std::result::Result<Option<T>, pgrx::spi::Error> {
    Spi::connect(|c| c.select(sql, Some(1), args)?.first().get_one::<T>())
}

/// The first row's first two columns of a read-only query (see [`read_one`]).
pub fn read_two<
    A: pgrx::datum::FromDatum + pgrx::datum::IntoDatum,
    B: pgrx::datum::FromDatum + pgrx::datum::IntoDatum,
>(
    sql: &str,
    args: &[pgrx::datum::DatumWithOid],
) -> std::result::Result<(Option<A>, Option<B>), pgrx::spi::Error> {
    Spi::connect(|c| c.select(sql, Some(1), args)?.first().get_two::<A, B>())
}

/// Runs catalog writes as the owner of the catalog tables, in a security-restricted context;
/// the caller's identity comes back however `f` ends.
pub fn as_catalog_owner<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    let owner = Spi::get_one::<pg_sys::Oid>(
        "SELECT relowner FROM pg_catalog.pg_class \
         WHERE oid OPERATOR(pg_catalog.=) 'lakesync.synced_tables'::pg_catalog.regclass",
    )
    .map_err(spi_err)?
    .ok_or_else(|| LakeError::Internal("the catalog lakesync.synced_tables is missing".into()))?;
    // Under a safe search_path too: a background worker (the failure recorder) picks up the
    // database's own search_path setting, which its owner may point at look-alike operators.
    as_user(owner, pg_sys::SECURITY_RESTRICTED_OPERATION as i32, || {
        crate::session::with_safe_search_path(f)
    })
}

/// The role that owns relation `relid`: (oid, name).
pub fn relation_owner(relid: pg_sys::Oid) -> Result<(pg_sys::Oid, String)> {
    Spi::connect(|c| {
        let rows = c.select(
            "SELECT c.relowner, r.rolname::pg_catalog.text FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) c.relowner \
             WHERE c.oid OPERATOR(pg_catalog.=) $1",
            Some(1),
            &[relid.into()],
        )?;
        let mut out = None;
        for r in rows {
            out = Some((
                r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid),
                r.get::<String>(2)?.unwrap_or_default(),
            ));
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .map_err(spi_err)?
    .ok_or_else(|| LakeError::Internal(format!("no table has OID {relid}")))
}

/// Runs `f` with `role` as the current user (and `context` added to the security context); the
/// previous identity comes back however `f` ends.
fn as_user<T>(role: pg_sys::Oid, context: i32, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let (mut user, mut old) = (pg_sys::InvalidOid, 0);
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut user, &mut old);
        pg_sys::SetUserIdAndSecContext(
            role,
            old | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32 | context,
        );
    }
    let f = std::panic::AssertUnwindSafe(f);
    PgTryBuilder::new(move || {
        let f = f;
        (f.0)()
    })
    .finally(move || unsafe { pg_sys::SetUserIdAndSecContext(user, old) })
    .execute()
}

/// The spec (target, owner) of the table with OID `relid`, for the background worker.
pub fn spec_of_relation(relid: pg_sys::Oid) -> Result<Option<(String, String)>> {
    Spi::connect(|c| {
        let rows = c.select(
            "SELECT target, owner::pg_catalog.text FROM lakesync.synced_tables \
             WHERE pg_catalog.to_regclass(target) OPERATOR(pg_catalog.=) $1",
            Some(1),
            &[relid.into()],
        )?;
        let mut out = None;
        for r in rows {
            out = Some((
                r.get::<String>(1)?.unwrap_or_default(),
                r.get::<String>(2)?.unwrap_or_default(),
            ));
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .map_err(spi_err)
}

/// Sets `paused` of a spec the caller owns (superusers: any); false when there is none.
pub fn set_paused(target: &str, caller: &Caller, paused: bool) -> Result<bool> {
    update_own_spec(target, caller, "paused = $4", vec![paused.into()])
}

/// Replaces the mode and options of a spec the caller owns (superusers: any).
pub fn set_mode_options(
    target: &str,
    caller: &Caller,
    mode: &str,
    options: &serde_json::Value,
) -> Result<bool> {
    update_own_spec(
        target,
        caller,
        "mode = $4, options = $5",
        vec![mode.into(), JsonB(options.clone()).into()],
    )
}

/// `UPDATE … SET <set>` of the spec of `target` if the caller owns it (superusers: any); `set`
/// takes its values from `$4` on (`values`). False when there is no such spec.
fn update_own_spec(
    target: &str,
    caller: &Caller,
    set: &str,
    values: Vec<DatumWithOid<'_>>,
) -> Result<bool> {
    let mut args: Vec<DatumWithOid> = vec![
        target.into(),
        caller.name.clone().into(),
        caller.superuser.into(),
    ];
    args.extend(values);
    as_catalog_owner(|| {
        Spi::get_one_with_args::<bool>(
            &format!(
                "WITH u AS (UPDATE lakesync.synced_tables SET {set} \
                 WHERE target OPERATOR(pg_catalog.=) $1 AND {OWN_ROWS} RETURNING 1) \
                 SELECT EXISTS (SELECT FROM u)"
            ),
            &args,
        )
        .map(|b| b.unwrap_or(false))
        .map_err(spi_err)
    })
}

pub fn insert_spec(spec: &Spec, relid: pg_sys::Oid, owner: &Caller) -> Result<()> {
    let args: Vec<DatumWithOid> = vec![
        spec.target.clone().into(),
        spec.source.clone().into(),
        spec.mode.clone().into(),
        spec.primary_key.clone().into(),
        JsonB(spec.options.clone()).into(),
        owner.name.clone().into(),
        relid.into(),
    ];
    as_catalog_owner(|| {
        Spi::run_with_args(
            "INSERT INTO lakesync.synced_tables \
             (target, source, mode, primary_key, options, owner, target_relid) \
             VALUES ($1, $2, $3, NULLIF($4, '{}'::pg_catalog.text[]), $5, $6, $7)",
            &args,
        )
        .map_err(spi_err)
    })
}

/// Loads a spec the caller may sync and locks its row, so two syncs of one table run one after
/// the other.
pub fn lock_spec(target: &str, caller: &Caller) -> Result<Option<Spec>> {
    as_catalog_owner(|| lock_own_spec(target, caller))
}

fn lock_own_spec(target: &str, caller: &Caller) -> Result<Option<Spec>> {
    let spec = Spi::connect_mut(|client| {
        let rows = client.update(
            &format!(
                "SELECT target, source, mode, coalesce(primary_key, '{{}}'), options, state, \
                 synced_version, delta_table_id, synced_columns, owner::pg_catalog.text, target_relid \
                 FROM lakesync.synced_tables \
                 WHERE target OPERATOR(pg_catalog.=) $1 AND {OWN_ROWS} FOR UPDATE"
            ),
            Some(1),
            &[
                target.into(),
                caller.name.clone().into(),
                caller.superuser.into(),
            ],
        )?;
        let mut spec = None;
        for row in rows {
            let state = row.get::<String>(6)?.unwrap_or_default();
            spec = Some((
                Spec {
                    target: row.get::<String>(1)?.unwrap_or_default(),
                    source: row.get::<String>(2)?.unwrap_or_default(),
                    mode: row.get::<String>(3)?.unwrap_or_default(),
                    primary_key: row.get::<Vec<String>>(4)?.unwrap_or_default(),
                    options: row
                        .get::<JsonB>(5)?
                        .map(|j| j.0)
                        .unwrap_or(serde_json::Value::Null),
                    state: State::New,
                    synced_version: row.get::<i64>(7)?,
                    delta_table_id: row.get::<String>(8)?,
                    synced_columns: row.get::<Vec<String>>(9)?,
                    owner: row.get::<String>(10)?.unwrap_or_default(),
                    target_relid: row.get::<pg_sys::Oid>(11)?,
                },
                state,
            ));
        }
        Ok::<_, pgrx::spi::Error>(spec)
    })
    .map_err(spi_err)?;
    spec.map(|(spec, state)| {
        Ok(Spec {
            state: State::parse(&state)?,
            ..spec
        })
    })
    .transpose()
}

/// Whether `target` is a synced table the caller owns (superusers: any) — not by row security
/// alone, which a BYPASSRLS role does not see — or, with `caller` None, anybody's.
pub fn exists(target: &str, caller: Option<&Caller>) -> Result<bool> {
    let anybody = Caller {
        name: String::new(),
        superuser: true,
    };
    let caller = caller.unwrap_or(&anybody);
    as_catalog_owner(|| {
        Spi::get_one_with_args::<bool>(
            &format!(
                "SELECT EXISTS (SELECT FROM lakesync.synced_tables \
                 WHERE target OPERATOR(pg_catalog.=) $1 AND {OWN_ROWS})"
            ),
            &[
                target.into(),
                caller.name.clone().into(),
                caller.superuser.into(),
            ],
        )
        .map(|b| b.unwrap_or(false))
        .map_err(spi_err)
    })
}

/// Forgets a spec; false when there was none the caller may see.
pub fn delete_spec(target: &str, caller: &Caller) -> Result<bool> {
    as_catalog_owner(|| {
        Spi::get_one_with_args::<bool>(
            &format!(
                "WITH d AS (DELETE FROM lakesync.synced_tables \
                 WHERE target OPERATOR(pg_catalog.=) $1 AND {OWN_ROWS} RETURNING 1) \
                 SELECT EXISTS (SELECT FROM d)"
            ),
            &[
                target.into(),
                caller.name.clone().into(),
                caller.superuser.into(),
            ],
        )
        .map(|b| b.unwrap_or(false))
        .map_err(spi_err)
    })
}

/// What a finished sync leaves in the spec row.
pub struct SyncedState {
    pub version: i64,
    pub table_id: String,
    /// The table's row count after the sync: exact after a snapshot, a change otherwise.
    pub rows: RowCount,
    pub started: pgrx::datum::TimestampWithTimeZone,
    /// The target columns the sync wrote.
    pub columns: Vec<String>,
    /// The target table (its OID changes in a dump and restore).
    pub relid: pg_sys::Oid,
}

pub enum RowCount {
    Exactly(i64),
    ChangedBy(i64),
}

/// Records a successful sync in the spec the sync locked (`lock_spec`).
pub fn mark_synced(target: &str, s: &SyncedState) -> Result<()> {
    as_catalog_owner(|| mark_locked_synced(target, s))
}

fn mark_locked_synced(target: &str, s: &SyncedState) -> Result<()> {
    Spi::run_with_args(
        "UPDATE lakesync.synced_tables SET state = 'synced', synced_version = $2, \
         rows = coalesce($3, rows OPERATOR(pg_catalog.+) $6), \
         last_sync_started = $4, last_sync_finished = pg_catalog.clock_timestamp(), \
         last_error = NULL, delta_table_id = $5, synced_columns = $7, target_relid = $8, \
         consecutive_failures = 0 \
         WHERE target OPERATOR(pg_catalog.=) $1",
        &[
            target.into(),
            s.version.into(),
            match s.rows {
                RowCount::Exactly(n) => Some(n),
                RowCount::ChangedBy(_) => None,
            }
            .into(),
            s.started.into(),
            s.table_id.clone().into(),
            match s.rows {
                RowCount::Exactly(_) => 0i64,
                RowCount::ChangedBy(d) => d,
            }
            .into(),
            s.columns.clone().into(),
            s.relid.into(),
        ],
    )
    .map_err(spi_err)
}

/// Records a sync that found the table current (the sync holds the spec's row lock).
pub fn mark_checked(target: &str, started: pgrx::datum::TimestampWithTimeZone) -> Result<()> {
    as_catalog_owner(|| {
        Spi::run_with_args(
            "UPDATE lakesync.synced_tables SET last_sync_started = $2, \
             last_sync_finished = pg_catalog.clock_timestamp() \
             WHERE target OPERATOR(pg_catalog.=) $1",
            &[target.into(), started.into()],
        )
        .map_err(spi_err)
    })
}

/// The schema a bare table name goes to: the first existing schema on the search_path.
pub fn default_schema() -> Result<String> {
    Spi::get_one::<String>("SELECT pg_catalog.current_schema()::pg_catalog.text")
        .map_err(spi_err)?
        .ok_or_else(|| {
            LakeError::InvalidName(
                "no schema has been selected to create in (the search_path is empty); qualify the target with a schema".into(),
            )
        })
}

/// The schema in which the search_path finds table `table` (unqualified), if any.
pub fn schema_on_search_path(table: &str) -> Result<Option<String>> {
    Spi::get_one_with_args::<String>(
        "SELECT (SELECT n.nspname::pg_catalog.text FROM pg_catalog.pg_class c \
         JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
         WHERE c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass(pg_catalog.quote_ident($1)))",
        &[table.into()],
    )
    .map_err(spi_err)
}

/// The oid of an existing relation, if any.
pub fn relation_oid(qualified: &str) -> Result<Option<pg_sys::Oid>> {
    Spi::get_one_with_args::<pg_sys::Oid>(
        "SELECT pg_catalog.to_regclass($1)::pg_catalog.oid",
        &[qualified.into()],
    )
    .map_err(spi_err)
}

/// The columns of a target that its syncs write, in order: (name, type as format_type prints
/// it). Columns the user added (not in `synced`; generated ones always) are left out: they
/// belong to the user, and syncs leave them alone.
pub fn synced_columns(
    relid: pg_sys::Oid,
    synced: Option<&[String]>,
) -> Result<Vec<(String, String)>> {
    Spi::connect(|client| {
        let rows = client.select(
            "SELECT attname::pg_catalog.text, pg_catalog.format_type(atttypid, atttypmod) \
             FROM pg_catalog.pg_attribute WHERE attrelid OPERATOR(pg_catalog.=) $1 \
             AND attnum OPERATOR(pg_catalog.>) 0 AND NOT attisdropped \
             AND attgenerated OPERATOR(pg_catalog.=) '' \
             AND ($2::pg_catalog.text[] IS NULL OR attname::pg_catalog.text OPERATOR(pg_catalog.=) ANY ($2)) \
             ORDER BY attnum",
            None,
            &[relid.into(), synced.map(|s| s.to_vec()).into()],
        )?;
        let mut out = Vec::new();
        for r in rows {
            out.push((
                r.get::<String>(1)?.unwrap_or_default(),
                r.get::<String>(2)?.unwrap_or_default(),
            ));
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .map_err(spi_err)
}

/// Records which table a spec's target names now (the sync holds the spec's row lock). Another
/// spec holding the same OID is stale (its table was renamed away): it forgets it, so that a
/// rename never finds two specs for one table.
pub fn set_target_relid(target: &str, relid: pg_sys::Oid) -> Result<()> {
    as_catalog_owner(|| {
        Spi::run_with_args(
            "UPDATE lakesync.synced_tables \
             SET target_relid = CASE WHEN target OPERATOR(pg_catalog.=) $1 THEN $2 END \
             WHERE target OPERATOR(pg_catalog.=) $1 OR target_relid OPERATOR(pg_catalog.=) $2",
            &[target.into(), relid.into()],
        )
        .map_err(spi_err)
    })
}

/// The row count the catalog holds for `target` (None when not known).
pub fn synced_rows(target: &str) -> Result<Option<u64>> {
    Spi::get_one_with_args::<i64>(
        "SELECT (SELECT rows FROM lakesync.synced_tables WHERE target OPERATOR(pg_catalog.=) $1)",
        &[target.into()],
    )
    .map(|n| n.filter(|&n| n >= 0).map(|n| n as u64))
    .map_err(|e| LakeError::Internal(format!("cannot read the synced row count: {e}")))
}
