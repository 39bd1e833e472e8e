//! Plain data shared by the sync's steps and its runners: what a sync reports back.

use std::time::Duration;

/// Where a sync's rows came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeSource {
    /// A full read of the table at one version.
    Snapshot,
    /// The Delta Change Data Feed.
    Cdf,
    /// The data files added and removed since the synced version.
    Files,
    /// Nothing was read: the table was already at that version.
    None,
}

impl ChangeSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeSource::Snapshot => "snapshot",
            ChangeSource::Cdf => "cdf",
            ChangeSource::Files => "files",
            ChangeSource::None => "none",
        }
    }
}

/// What a sync reports back to SQL.
pub struct SyncReport {
    pub target: String,
    pub source: String,
    pub mode: String,
    pub change_source: ChangeSource,
    pub from_version: Option<i64>,
    pub delta_version: i64,
    pub inserted: i64,
    pub updated: i64,
    pub deleted: i64,
    pub skipped: i64,
    pub duration: Duration,
    pub message: String,
}

/// The arguments of `create_synced_table`.
pub struct NewSyncedTable<'a> {
    pub target: &'a str,
    pub source: &'a str,
    pub primary_key: Vec<String>,
    pub mode: &'a str,
    pub options: serde_json::Value,
}

/// Rows a sync touched.
#[derive(Default, Clone, Copy)]
pub struct Counts {
    pub inserted: i64,
    pub updated: i64,
    pub deleted: i64,
    pub skipped: i64,
    /// Older rows of a key that timeseries_key replaced with a newer one.
    pub superseded: i64,
}
