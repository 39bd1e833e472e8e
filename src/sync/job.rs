//! A sync job: everything one sync of an existing synced table needs, resolved once up front —
//! the spec (locked, so two syncs of one table run one after the other; its owner is whose run it is),
//! the target relation and the source location — before any data is read.

use crate::catalog::{self, Caller, Spec};
use crate::error::{LakeError, Result};
use crate::options::{Mode, SyncOptions};
use crate::plan::target::TargetName;
use crate::source::location::SourceLocation;
use pgrx::pg_sys;

pub struct SyncJob {
    pub name: TargetName,
    pub spec: Spec,
    pub mode: Mode,
    pub opts: SyncOptions,
    pub location: SourceLocation,
    pub relid: pg_sys::Oid,
}

impl SyncJob {
    /// Loads and locks the spec of `name` that `caller` may sync (telling `locked` whose it is,
    /// before anything else can fail), and checks that the caller may read its source and that
    /// its table exists.
    pub fn resolve(
        name: &TargetName,
        caller: &Caller,
        locked: impl FnOnce(&Spec),
    ) -> Result<SyncJob> {
        let qualified = name.qualified();
        let relid = lock_target(&qualified, pg_sys::ShareUpdateExclusiveLock)?;
        let spec = catalog::lock_spec(&qualified, caller)?
            .ok_or_else(|| LakeError::NotSynced(qualified.clone()))?;
        locked(&spec);
        let opts = SyncOptions::parse(&spec.options)?;
        let mode = Mode::parse(&spec.mode)?;
        let location =
            crate::credentials::locate(&spec.source, &spec.owner, opts.credential.as_deref())?;
        let relid = relid.ok_or_else(|| LakeError::InvalidParameter {
            message: format!("the table of synced table \"{qualified}\" no longer exists"),
            hint: Some(format!(
                "Run drop_synced_table({}) to forget it, or create_synced_table() again after that.",
                pgrx::spi::quote_literal(&qualified)
            )),
        })?;
        // Which table the spec names, for the rename trigger: kept current by every sync, also
        // one that finds nothing to do (after a restore the dumped OID is another database's).
        if spec.target_relid != Some(relid) {
            catalog::set_target_relid(&qualified, relid)?;
        }
        Ok(SyncJob {
            name: name.clone(),
            spec,
            mode,
            opts,
            location,
            relid,
        })
    }
}

/// Locks the table `qualified` names, if any, before its spec row is touched, and returns it.
///
/// The table first: ALTER TABLE … RENAME holds the table while its event trigger updates the spec
/// row, and a sync that changes columns (or a drop) needs the table exclusively while another
/// sync waits for the row — the other order deadlocks. Syncs take ShareUpdateExclusiveLock, which
/// conflicts with itself (two syncs of one table queue here, holding nothing) but not with the
/// applications' reads and writes.
pub fn lock_target(qualified: &str, mode: u32) -> Result<Option<pg_sys::Oid>> {
    let Some(relid) = catalog::relation_oid(qualified)? else {
        return Ok(None);
    };
    unsafe { pg_sys::LockRelationOid(relid, mode as pg_sys::LOCKMODE) };
    // Renamed, replaced or dropped while we waited for the lock.
    match catalog::relation_oid(qualified)? {
        Some(now) if now == relid => Ok(Some(relid)),
        now => Err(LakeError::invalid_with_hint(
            format!(
                "table \"{qualified}\" was {} while the sync waited for it",
                if now.is_none() {
                    "dropped"
                } else {
                    "renamed or replaced"
                }
            ),
            "Run it again.",
        )),
    }
}
