//! The `options` jsonb of a synced table, parsed and validated once.

use crate::error::{LakeError, Result};
use serde_json::Value;

pub const KNOWN_OPTIONS: &[&str] = &[
    "version",
    "columns",
    "timeseries_key",
    "null_bytes",
    "on_gap",
    "change_detection",
    "schedule",
    "credential",
    "read_only",
    "full_refresh_above",
    "load_workers",
];

/// When an incremental sync (or a SNAPSHOT re-sync that could apply only the changed files)
/// reads the whole table instead.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Crossover {
    /// Where it is measured to be cheaper (see sync::decide).
    Measured,
    /// Never by itself.
    Never,
    /// When the change files hold more than this share of the table's bytes.
    Above(f64),
}

/// What an incremental sync does when the versions it needs cannot be replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnGap {
    /// Fail, and leave the table in state needs_full_refresh.
    Fail,
    /// Rebuild the table from the latest version, atomically.
    FullRefresh,
}

/// Where an incremental sync learns what changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeDetection {
    /// The Delta Change Data Feed.
    Cdf,
    /// The files each commit removed and added.
    Files,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NullBytes {
    /// A NUL byte in a string fails the sync, naming column and key.
    Error,
    /// NUL bytes are removed from strings.
    Strip,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SyncOptions {
    /// Pin the sync to this Delta version (time travel); latest when absent.
    pub version: Option<i64>,
    /// Sync only these source columns, in this order; all when absent.
    pub columns: Option<Vec<String>>,
    /// Among rows sharing a primary key keep the one with the greatest value of this column.
    pub timeseries_key: Option<String>,
    pub null_bytes: NullBytes,
    pub on_gap: OnGap,
    pub change_detection: ChangeDetection,
    /// When the background worker syncs a SNAPSHOT or TRIGGERED table by itself: an interval
    /// (`"5 minutes"`) after each sync's start. None: only on demand.
    pub schedule: Option<String>,
    /// The credential (of the spec's owner) an object-store source is read with; None: the
    /// owner's credential whose scope covers the source.
    pub credential: Option<String>,
    /// Whether applications are kept from writing the target (only syncs may).
    pub read_only: bool,
    pub full_refresh_above: Crossover,
    /// How many background workers share a first load's files (1: the syncing backend alone).
    pub load_workers: u32,
}

/// The most background workers one load may use.
pub const MAX_LOAD_WORKERS: u32 = 16;

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            version: None,
            columns: None,
            timeseries_key: None,
            null_bytes: NullBytes::Error,
            on_gap: OnGap::Fail,
            change_detection: ChangeDetection::Cdf,
            schedule: None,
            credential: None,
            read_only: true,
            full_refresh_above: Crossover::Measured,
            load_workers: 1,
        }
    }
}

impl SyncOptions {
    pub fn parse(value: &Value) -> Result<Self> {
        let obj = match value {
            Value::Null => return Ok(SyncOptions::default()),
            Value::Object(o) => o,
            other => {
                return Err(LakeError::invalid(format!(
                    "options must be a JSON object, not {}",
                    json_kind(other)
                )))
            }
        };
        let mut opts = SyncOptions::default();
        for (key, v) in obj {
            match key.as_str() {
                "version" => {
                    let n = v.as_i64().filter(|n| *n >= 0).ok_or_else(|| {
                        LakeError::invalid(format!(
                            "option \"version\" must be a non-negative integer, not {v}"
                        ))
                    })?;
                    opts.version = Some(n);
                }
                "columns" => {
                    let arr = v.as_array().filter(|a| !a.is_empty()).ok_or_else(|| {
                        LakeError::invalid(format!(
                            "option \"columns\" must be a non-empty array of column names, not {v}"
                        ))
                    })?;
                    let mut cols = Vec::with_capacity(arr.len());
                    for c in arr {
                        let name = c.as_str().filter(|s| !s.is_empty()).ok_or_else(|| {
                            LakeError::invalid(format!(
                                "option \"columns\" must hold column names (strings), not {c}"
                            ))
                        })?;
                        if cols.iter().any(|x: &String| x == name) {
                            return Err(LakeError::invalid(format!(
                                "option \"columns\" names column \"{name}\" twice"
                            )));
                        }
                        cols.push(name.to_string());
                    }
                    opts.columns = Some(cols);
                }
                "timeseries_key" => {
                    let name = v.as_str().filter(|s| !s.is_empty()).ok_or_else(|| {
                        LakeError::invalid(format!(
                            "option \"timeseries_key\" must be a column name, not {v}"
                        ))
                    })?;
                    opts.timeseries_key = Some(name.to_string());
                }
                "null_bytes" => {
                    opts.null_bytes = match v.as_str() {
                        Some("error") => NullBytes::Error,
                        Some("strip") => NullBytes::Strip,
                        _ => {
                            return Err(LakeError::invalid_with_hint(
                                format!("invalid value {v} for option \"null_bytes\""),
                                "Valid values are \"error\" and \"strip\".",
                            ))
                        }
                    }
                }
                "on_gap" => {
                    opts.on_gap = match v.as_str() {
                        Some("fail") => OnGap::Fail,
                        Some("full_refresh") => OnGap::FullRefresh,
                        _ => {
                            return Err(LakeError::invalid_with_hint(
                                format!("invalid value {v} for option \"on_gap\""),
                                "Valid values are \"fail\" and \"full_refresh\".",
                            ))
                        }
                    }
                }
                "change_detection" => {
                    opts.change_detection = match v.as_str() {
                        Some("cdf") => ChangeDetection::Cdf,
                        Some("files") => ChangeDetection::Files,
                        _ => {
                            return Err(LakeError::invalid_with_hint(
                                format!("invalid value {v} for option \"change_detection\""),
                                "Valid values are \"cdf\" and \"files\".",
                            ))
                        }
                    }
                }
                "schedule" => {
                    let text = v.as_str().filter(|s| !s.trim().is_empty()).ok_or_else(|| {
                        LakeError::invalid_with_hint(
                            format!("option \"schedule\" must be a string (an interval or a cron expression), not {v}"),
                            "For example \"schedule\": \"5 minutes\" or \"schedule\": \"*/15 * * * *\".",
                        )
                    })?;
                    opts.schedule = Some(text.to_string());
                }
                "credential" => {
                    let name = v.as_str().filter(|s| !s.trim().is_empty()).ok_or_else(|| {
                        LakeError::invalid(format!(
                            "option \"credential\" must be the name of a credential, not {v}"
                        ))
                    })?;
                    opts.credential = Some(name.to_string());
                }
                "read_only" => {
                    opts.read_only = v.as_bool().ok_or_else(|| {
                        LakeError::invalid(format!(
                            "option \"read_only\" must be true or false, not {v}"
                        ))
                    })?;
                }
                "full_refresh_above" => {
                    opts.full_refresh_above = match v {
                        Value::Bool(false) => Crossover::Never,
                        Value::Number(n) if n.as_f64().is_some_and(|x| x > 0.0 && x.is_finite()) => {
                            Crossover::Above(n.as_f64().unwrap())
                        }
                        _ => {
                            return Err(LakeError::invalid_with_hint(
                                format!(
                                    "option \"full_refresh_above\" must be a positive number or false, not {v}"
                                ),
                                "It is the share of the table's bytes in change files above which a sync reads the whole table instead: 0.2 is 20 %; false never switches.",
                            ))
                        }
                    };
                }
                "load_workers" => {
                    opts.load_workers = v
                        .as_u64()
                        .filter(|n| (1..=MAX_LOAD_WORKERS as u64).contains(n))
                        .ok_or_else(|| {
                            LakeError::invalid_with_hint(
                                format!("option \"load_workers\" must be an integer from 1 to {MAX_LOAD_WORKERS}, not {v}"),
                                "It is how many background workers share the first load's files; each takes a slot of max_worker_processes.",
                            )
                        })? as u32;
                }
                other => {
                    return Err(LakeError::invalid_with_hint(
                        format!("unknown option \"{other}\""),
                        format!("Valid options are: {}.", KNOWN_OPTIONS.join(", ")),
                    ))
                }
            }
        }
        Ok(opts)
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The sync modes of Lakebase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Snapshot,
    Triggered,
    Continuous,
}

impl Mode {
    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "snapshot" => Ok(Mode::Snapshot),
            "triggered" => Ok(Mode::Triggered),
            "continuous" => Ok(Mode::Continuous),
            _ => Err(LakeError::invalid_with_hint(
                format!("unknown sync mode \"{s}\""),
                "Valid modes are snapshot, triggered and continuous.",
            )),
        }
    }

    /// Whether syncs after the first apply the changes since the synced version (TRIGGERED on
    /// demand or on a schedule, CONTINUOUS as each version appears) rather than a snapshot.
    pub fn incremental(self) -> bool {
        matches!(self, Mode::Triggered | Mode::Continuous)
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Mode::Snapshot => "snapshot",
            Mode::Triggered => "triggered",
            Mode::Continuous => "continuous",
        }
    }
}
