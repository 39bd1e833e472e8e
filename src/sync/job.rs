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
    /// Loads and locks the spec of `name` that `caller` may sync, and checks that the caller may
    /// read its source and that its table exists.
    pub fn resolve(name: &TargetName, caller: &Caller) -> Result<SyncJob> {
        let qualified = name.qualified();
        // The table before the spec row: ALTER TABLE … RENAME holds the table and its event
        // trigger then updates the spec row, so the other order can deadlock with it.
        let relid = catalog::relation_oid(&qualified)?;
        if let Some(relid) = relid {
            unsafe { pg_sys::LockRelationOid(relid, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE) };
            // Renamed or replaced while we waited for the lock: the name is no longer this table.
            if catalog::relation_oid(&qualified)? != Some(relid) {
                return Err(LakeError::invalid_with_hint(
                    format!("table \"{qualified}\" was renamed or replaced while the sync waited for it"),
                    "Run the sync again.",
                ));
            }
        }
        let spec = catalog::lock_spec(&qualified, caller)?
            .ok_or_else(|| LakeError::NotSynced(qualified.clone()))?;
        let opts = SyncOptions::parse(&spec.options)?;
        let mode = Mode::parse(&spec.mode)?;
        let location = SourceLocation::parse(&spec.source)?;
        location.check_access()?;
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
