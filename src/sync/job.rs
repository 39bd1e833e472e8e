//! A sync job: everything one sync of an existing synced table needs, resolved once up front —
//! the spec (locked, so two syncs of one table run one after the other), the role it runs for,
//! the target relation and the source location — before any data is read.

use crate::catalog::{self, Caller, Spec};
use crate::error::{LakeError, Result};
use crate::options::{Mode, SyncOptions};
use crate::plan::target::TargetName;
use crate::source::location::SourceLocation;
use pgrx::pg_sys;

pub struct SyncJob {
    pub name: TargetName,
    pub caller: Caller,
    pub spec: Spec,
    pub mode: Mode,
    pub opts: SyncOptions,
    pub location: SourceLocation,
    pub relid: pg_sys::Oid,
}

impl SyncJob {
    /// Loads and locks the spec of `name` that `caller` may sync, and checks that the caller may
    /// read its source and that its table exists.
    pub fn resolve(name: &TargetName, caller: Caller) -> Result<SyncJob> {
        let qualified = name.qualified();
        let spec = catalog::lock_spec(&qualified, &caller)?
            .ok_or_else(|| LakeError::NotSynced(qualified.clone()))?;
        let opts = SyncOptions::parse(&spec.options)?;
        let mode = Mode::parse(&spec.mode)?;
        let location = SourceLocation::parse(&spec.source)?;
        location.check_access()?;
        let relid =
            catalog::relation_oid(&qualified)?.ok_or_else(|| LakeError::InvalidParameter {
                message: format!("the table of synced table \"{qualified}\" no longer exists"),
                hint: Some(format!(
                    "Run drop_synced_table('{qualified}') to forget it, or create_synced_table() \
                     again after that."
                )),
            })?;
        Ok(SyncJob {
            name: name.clone(),
            caller,
            spec,
            mode,
            opts,
            location,
            relid,
        })
    }
}
