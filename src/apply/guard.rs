//! Synced tables are read-only to applications: a statement trigger refuses INSERT, UPDATE,
//! DELETE and TRUNCATE unless a sync of that very table is writing it in this backend.
//! Option `"read_only": false` leaves the trigger off.

use crate::error::{LakeError, Result};
use crate::plan::target::TargetName;
use pgrx::prelude::*;
use std::cell::RefCell;

/// The trigger's name on every read-only synced table.
pub const TRIGGER: &str = "lakesync_read_only";

thread_local! {
    /// The tables this backend's syncs are writing now (a sync run by a trigger of another
    /// synced table nests).
    static WRITING: RefCell<Vec<pg_sys::Oid>> = const { RefCell::new(Vec::new()) };
}

/// Lets the sync write `relid` until the returned guard is dropped (also when an ERROR unwinds).
pub fn writing(relid: pg_sys::Oid) -> Writing {
    WRITING.with_borrow_mut(|w| w.push(relid));
    Writing(relid)
}

pub struct Writing(pg_sys::Oid);

impl Drop for Writing {
    fn drop(&mut self) {
        WRITING.with_borrow_mut(|w| {
            if let Some(i) = w.iter().rposition(|r| *r == self.0) {
                w.remove(i);
            }
        });
    }
}

/// SQL `lakesync.sync_is_writing(regclass)`, created in src/access.sql: what the trigger asks.
#[pg_extern(sql = false)]
fn lakesync_sync_is_writing(relid: pg_sys::Oid) -> bool {
    WRITING.with_borrow(|w| w.contains(&relid))
}

/// Puts the trigger on (`read_only`) or takes it off the target; needs what CREATE TRIGGER
/// needs (the table's owner, or the TRIGGER privilege).
pub fn set_read_only(target: &TargetName, read_only: bool) -> Result<()> {
    let t = target.qualified();
    let present = crate::catalog::read_one::<bool>(
        "SELECT EXISTS (SELECT FROM pg_catalog.pg_trigger \
          WHERE tgrelid OPERATOR(pg_catalog.=) $1::pg_catalog.regclass \
            AND tgname OPERATOR(pg_catalog.=) $2)",
        &[t.as_str().into(), TRIGGER.into()],
    )
    .map_err(|e| LakeError::Internal(format!("cannot look up the triggers of {t}: {e}")))?
    .unwrap_or(false);
    let sql = match (read_only, present) {
        (true, false) => format!(
            "CREATE TRIGGER {TRIGGER} BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON {t} \
             FOR EACH STATEMENT EXECUTE FUNCTION lakesync.refuse_writes()"
        ),
        (false, true) => format!("DROP TRIGGER {TRIGGER} ON {t}"),
        _ => return Ok(()),
    };
    Spi::run(&sql).map_err(|e| LakeError::Permission {
        message: format!(
            "cannot {} synced table \"{t}\" read-only: {e}",
            if read_only { "make" } else { "stop making" }
        ),
        hint: Some("The table's owner (or a role with the TRIGGER privilege on it) can; or pass \"read_only\": false to create_synced_table to leave writes allowed.".into()),
    })
}
