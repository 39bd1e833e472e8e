//! Decide: from what the catalog says was synced and what the Delta table is now, what a sync
//! must do — nothing, a snapshot (and why), or apply the changes since the synced version.
//! Pure: no Postgres, no I/O, so every rule is unit-tested on its own.

use crate::catalog::State;
use crate::error::LakeError;
use crate::options::{Mode, OnGap};
use crate::source::estimate::Sizes;

/// Everything a decision depends on.
#[derive(Debug, Clone)]
pub struct Facts<'a> {
    pub target: &'a str,
    /// The source as shown in messages.
    pub source: &'a str,
    pub mode: Mode,
    pub on_gap: OnGap,
    pub state: State,
    pub synced_version: Option<i64>,
    /// The Delta table id the synced version belongs to.
    pub synced_table_id: Option<&'a str>,
    /// The version and table id the sync would bring the target to.
    pub version: i64,
    pub table_id: &'a str,
    /// Whether the target's columns must change at all.
    pub schema_changed: bool,
    /// The schema changes a sync cannot apply without losing data (described).
    pub lossy: Vec<String>,
    /// `full_refresh` was called.
    pub full_refresh: bool,
    /// A SNAPSHOT re-sync may apply only the files that changed: the target has a primary key,
    /// no timeseries_key, and is read-only (so it still holds exactly the synced version).
    pub diffable: bool,
}

#[derive(Debug)]
pub enum Decision {
    /// Already at this version of this table: nothing to read or write.
    Nothing,
    /// Replace the contents with a full read; `why` says why a table that could have been
    /// synced incrementally (or was already synced) is reloaded.
    Snapshot { why: Option<String> },
    /// Apply the changes of versions `synced + 1 ..= version`.
    Incremental { synced: i64 },
    /// A SNAPSHOT re-sync from `synced`: the files changed since then if they are few (see
    /// `full_refresh_cheaper`), else a full read.
    SnapshotOrDiff { synced: i64 },
    /// Refuse, with this error.
    Fail(LakeError),
}

pub fn decide(f: &Facts) -> Decision {
    if f.full_refresh {
        return Decision::Snapshot {
            why: Some("requested".into()),
        };
    }
    if !f.lossy.is_empty() {
        let e = LakeError::SchemaChanged {
            target: f.target.to_string(),
            detail: f.lossy.join("; "),
        };
        return or_full_refresh(f, e);
    }
    // A new table at the same path (a new id) is never "the version already synced", even when
    // it has reached the same version number.
    let replaced = f.synced_table_id.is_some_and(|old| old != f.table_id);
    if f.state == State::Synced
        && f.synced_version == Some(f.version)
        && !f.schema_changed
        && !replaced
    {
        return Decision::Nothing;
    }
    let synced = match (f.mode, f.synced_version) {
        (mode, Some(v)) if mode.incremental() => v,
        (Mode::Snapshot, Some(v))
            if f.diffable
                && f.state == State::Synced
                && !replaced
                && !f.schema_changed
                && v < f.version =>
        {
            return Decision::SnapshotOrDiff { synced: v }
        }
        // Snapshot mode, or a first sync that never completed: read it all.
        _ => {
            return Decision::Snapshot {
                why: replaced.then(|| "the Delta table was replaced by a new one".into()),
            }
        }
    };
    if let Some(gap) = gap(f, synced, replaced) {
        return or_full_refresh(f, gap);
    }
    Decision::Incremental { synced }
}

/// Above this share of the table's bytes in change files, applying the changes costs more than a
/// full refresh that swaps in a new table (measured: W2's crossover, 28.6 % of the bytes at
/// 16 % churn, BENCHMARKS.md), or (in place) one that deletes and reinserts every row (derived:
/// W7's in-place replace costs 2.6 times a swap, which W2's change costs reach near 43 % churn).
pub const CROSSOVER_SWAP: f64 = 0.28;
pub const CROSSOVER_IN_PLACE: f64 = 0.60;

/// Below this many bytes of data files, the measured crossover is not applied: both ways take
/// milliseconds, and each mode does what it says (TRIGGERED applies changes, SNAPSHOT reads all).
pub const MIN_TABLE_BYTES: u64 = 16 << 20;

/// Which of applying changes and reading the whole table is cheaper.
#[derive(Debug, PartialEq, Eq)]
pub enum Cheaper {
    Changes,
    /// Reading the whole table, and why.
    Full(String),
    /// Not known, or too small a table to matter.
    Either,
}

/// Compares the change files' share of the table's bytes with `threshold`, the share above which
/// a full read is cheaper; `explicit` when the user set it (then also for small tables).
pub fn cheaper(sizes: Option<Sizes>, threshold: f64, explicit: bool) -> Cheaper {
    let Some(sizes) = sizes.filter(|s| s.table > 0) else {
        return Cheaper::Either;
    };
    if !explicit && sizes.table < MIN_TABLE_BYTES {
        return Cheaper::Either;
    }
    let share = sizes.changes as f64 / sizes.table as f64;
    if share > threshold {
        Cheaper::Full(format!(
            "the changes are {:.0} % of the table's bytes, above the {:.0} % where a full refresh is cheaper",
            share * 100.0,
            threshold * 100.0
        ))
    } else {
        Cheaper::Changes
    }
}

/// A reason the versions after `synced` cannot be replayed, known before reading them.
fn gap(f: &Facts, synced: i64, replaced: bool) -> Option<LakeError> {
    let reason = if f.state == State::NeedsFullRefresh {
        format!(
            "synced table \"{}\" needs a full refresh since an earlier sync failed",
            f.target
        )
    } else if replaced {
        format!(
            "Delta table \"{}\" was replaced by a new table (its id changed from {} to {})",
            f.source,
            f.synced_table_id.unwrap_or_default(),
            f.table_id
        )
    } else if f.version < synced {
        format!(
            "Delta table \"{}\" is at version {}, older than synced version {synced}",
            f.source, f.version
        )
    } else {
        return None;
    };
    Some(LakeError::Gap { reason })
}

/// A failure only a full refresh can get past: per option on_gap (TRIGGERED only).
fn or_full_refresh(f: &Facts, e: LakeError) -> Decision {
    match (f.mode, f.on_gap) {
        (mode, OnGap::FullRefresh) if mode.incremental() => Decision::Snapshot {
            why: Some(e.to_string()),
        },
        _ => Decision::Fail(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synced(mode: Mode) -> Facts<'static> {
        Facts {
            target: "public.t",
            source: "/lake/t",
            mode,
            on_gap: OnGap::Fail,
            state: State::Synced,
            synced_version: Some(3),
            synced_table_id: Some("id-1"),
            version: 3,
            table_id: "id-1",
            schema_changed: false,
            lossy: Vec::new(),
            full_refresh: false,
            diffable: false,
        }
    }

    fn why(d: Decision) -> Option<String> {
        match d {
            Decision::Snapshot { why } => why,
            other => panic!("expected a snapshot, got {other:?}"),
        }
    }

    fn gap_message(d: Decision) -> String {
        match d {
            Decision::Fail(e @ LakeError::Gap { .. }) => e.to_string(),
            other => panic!("expected a gap, got {other:?}"),
        }
    }

    #[test]
    fn crossover_by_share_of_bytes() {
        let sizes = |changes, table| Some(Sizes { changes, table });
        let mib = 1 << 20;
        assert_eq!(
            cheaper(sizes(10 * mib, 100 * mib), 0.15, false),
            Cheaper::Changes
        );
        assert_eq!(
            cheaper(sizes(20 * mib, 100 * mib), 0.15, false),
            Cheaper::Full("the changes are 20 % of the table's bytes, above the 15 % where a full refresh is cheaper".into())
        );
        // A small table: only an explicit threshold decides.
        assert_eq!(cheaper(sizes(50, 100), 0.15, false), Cheaper::Either);
        assert!(matches!(
            cheaper(sizes(50, 100), 0.15, true),
            Cheaper::Full(_)
        ));
        assert_eq!(cheaper(sizes(5, 0), 0.15, true), Cheaper::Either);
        assert_eq!(cheaper(None, 0.15, true), Cheaper::Either);
    }

    #[test]
    fn snapshot_resync_of_a_diffable_table_may_diff() {
        let mut f = synced(Mode::Snapshot);
        f.version = 5;
        assert!(matches!(decide(&f), Decision::Snapshot { why: None }));
        f.diffable = true;
        assert!(matches!(decide(&f), Decision::SnapshotOrDiff { synced: 3 }));
        f.schema_changed = true;
        assert!(matches!(decide(&f), Decision::Snapshot { .. }));
        f.schema_changed = false;
        f.state = State::NeedsFullRefresh;
        assert!(matches!(decide(&f), Decision::Snapshot { .. }));
        f.state = State::Synced;
        f.full_refresh = true;
        assert!(matches!(decide(&f), Decision::Snapshot { .. }));
    }

    #[test]
    fn same_version_same_table_is_nothing() {
        for mode in [Mode::Snapshot, Mode::Triggered] {
            assert!(matches!(decide(&synced(mode)), Decision::Nothing));
        }
    }

    #[test]
    fn new_version() {
        let f = Facts {
            version: 5,
            ..synced(Mode::Triggered)
        };
        assert!(matches!(decide(&f), Decision::Incremental { synced: 3 }));
        let f = Facts {
            version: 5,
            ..synced(Mode::Snapshot)
        };
        assert_eq!(why(decide(&f)), None);
    }

    #[test]
    fn first_sync_that_never_completed_is_a_snapshot() {
        let f = Facts {
            state: State::New,
            synced_version: None,
            synced_table_id: None,
            ..synced(Mode::Triggered)
        };
        assert_eq!(why(decide(&f)), None);
    }

    #[test]
    fn replaced_table_at_the_synced_version_number() {
        let f = Facts {
            table_id: "id-2",
            ..synced(Mode::Snapshot)
        };
        assert_eq!(
            why(decide(&f)).as_deref(),
            Some("the Delta table was replaced by a new one")
        );
        let f = Facts {
            table_id: "id-2",
            ..synced(Mode::Triggered)
        };
        assert!(gap_message(decide(&f)).contains("replaced by a new table"));
        let f = Facts {
            table_id: "id-2",
            on_gap: OnGap::FullRefresh,
            ..synced(Mode::Triggered)
        };
        assert!(why(decide(&f)).unwrap().contains("replaced by a new table"));
    }

    #[test]
    fn older_version_is_a_gap() {
        let f = Facts {
            version: 2,
            ..synced(Mode::Triggered)
        };
        assert!(gap_message(decide(&f)).contains("older than synced version 3"));
    }

    #[test]
    fn needs_full_refresh_refuses_until_a_full_refresh() {
        let f = Facts {
            state: State::NeedsFullRefresh,
            version: 4,
            ..synced(Mode::Triggered)
        };
        assert!(gap_message(decide(&f)).contains("needs a full refresh"));
        let f = Facts {
            full_refresh: true,
            ..f
        };
        assert_eq!(why(decide(&f)).as_deref(), Some("requested"));
    }

    #[test]
    fn lossy_schema_change() {
        let lossy = vec!["column \"v\" is no longer in the Delta table".to_string()];
        for mode in [Mode::Snapshot, Mode::Triggered] {
            let f = Facts {
                lossy: lossy.clone(),
                schema_changed: true,
                ..synced(mode)
            };
            assert!(matches!(
                decide(&f),
                Decision::Fail(LakeError::SchemaChanged { .. })
            ));
        }
        let f = Facts {
            lossy,
            schema_changed: true,
            on_gap: OnGap::FullRefresh,
            ..synced(Mode::Triggered)
        };
        assert!(why(decide(&f))
            .unwrap()
            .contains("no longer in the Delta table"));
    }

    #[test]
    fn added_column_at_the_same_version_is_not_nothing() {
        let f = Facts {
            schema_changed: true,
            ..synced(Mode::Triggered)
        };
        assert!(matches!(decide(&f), Decision::Incremental { synced: 3 }));
    }

    #[test]
    fn failed_state_retries() {
        let f = Facts {
            state: State::Failed,
            ..synced(Mode::Triggered)
        };
        assert!(matches!(decide(&f), Decision::Incremental { synced: 3 }));
    }
}
