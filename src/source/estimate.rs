//! How much an incremental sync would read against how much a full refresh would: the sizes
//! of the change files and of the whole table, from the Delta log alone (nothing is read from
//! the data files). What the crossover to a full refresh is decided on.

use super::DeltaSource;
use crate::error::Result;
use crate::options::ChangeDetection;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    /// Bytes of the files the incremental sync reads.
    pub changes: u64,
    /// Bytes of the files of the source's version: what a full refresh reads.
    pub table: u64,
}

/// The sizes for the changes after `synced`, or None when the log cannot tell (a size is
/// missing, the versions are gone): then nothing is decided on them.
pub fn sizes(source: &DeltaSource, synced: i64, detection: ChangeDetection) -> Option<Sizes> {
    match detection {
        ChangeDetection::Files => {
            let diff = super::files::diff(source, synced).ok()??;
            Some(Sizes {
                changes: diff.bytes,
                table: diff.table_bytes,
            })
        }
        ChangeDetection::Cdf => Some(Sizes {
            changes: cdf_bytes(source, synced + 1, source.version()).ok()??,
            table: table_bytes(source).ok()?,
        }),
    }
}

/// The bytes the change feed reads for versions `from..=to`: a commit's change data files
/// where it wrote some, else the files it added and removed (which the feed reads whole).
fn cdf_bytes(source: &DeltaSource, from: i64, to: i64) -> Result<Option<u64>> {
    if to < from {
        return Ok(Some(0));
    }
    let mut total = 0u64;
    for actions in super::changes::commit_actions(source, from, to)? {
        let sized = |kind: &str| -> Option<u64> {
            let mut sum = 0u64;
            for a in actions.iter().filter_map(|a| a.get(kind)) {
                let data_change = a.get("dataChange").and_then(|d| d.as_bool());
                if kind != "cdc" && data_change == Some(false) {
                    continue;
                }
                sum += a.get("size").and_then(|s| s.as_u64())?;
            }
            Some(sum)
        };
        let has_cdc = actions.iter().any(|a| a.get("cdc").is_some());
        total += if has_cdc {
            match sized("cdc") {
                Some(n) => n,
                None => return Ok(None),
            }
        } else {
            match (sized("add"), sized("remove")) {
                (Some(a), Some(r)) => a + r,
                _ => return Ok(None),
            }
        };
    }
    Ok(Some(total))
}

/// The bytes of every data file of the source's version.
fn table_bytes(source: &DeltaSource) -> delta_kernel::DeltaResult<u64> {
    let _guard = super::runtime().enter();
    let scan = source.snapshot.clone().scan_builder().build()?;
    let mut total = 0u64;
    for meta in scan.scan_metadata(source.engine.as_ref())? {
        total = meta?.visit_scan_files(total, |t, f| *t += f.size.max(0) as u64)?;
    }
    Ok(total)
}
