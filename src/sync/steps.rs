//! Steps: turn an incremental decision into rounds of staged changes, each with the plan its
//! rows follow and the streams they come from — the change feed in segments of one schema, or
//! the data files added and removed.

use crate::apply::changes::StagePart;
use crate::error::{LakeError, Result};
use crate::options::{ChangeDetection, NullBytes};
use crate::plan::ColumnsPlan;
use crate::source::{changes, files, DeltaSource};

/// The steps that bring the target from `synced` to the source's version.
pub fn build(
    source: &DeltaSource,
    plan: &ColumnsPlan,
    synced: i64,
    detection: ChangeDetection,
    null_bytes: NullBytes,
) -> Result<Vec<Step>> {
    match detection {
        ChangeDetection::Cdf => {
            segments(source, plan, synced).map(|s| cdf_steps(source, s, null_bytes))
        }
        ChangeDetection::Files => file_steps(source, plan, synced, null_bytes),
    }
}

/// A range of versions with one schema, and the plan to read its changes with.
struct Segment {
    from: i64,
    to: i64,
    plan: ColumnsPlan,
}

/// Splits `synced+1..=latest` where the Delta schema changed — any change, also to columns the
/// target does not sync (the change feed is read with one schema at a time) — and checks each
/// piece can be replayed.
fn segments(source: &DeltaSource, plan: &ColumnsPlan, synced: i64) -> Result<Vec<Segment>> {
    let (from, to) = (synced + 1, source.version());
    if to < from {
        return Ok(Vec::new());
    }
    let mut bounds = vec![from];
    let src = source.clone();
    let found = crate::offload::run(move || changes::metadata_versions(&src, from, to))?;
    bounds.extend(found.into_iter().filter(|&v| v > from));
    let mut out = Vec::with_capacity(bounds.len());
    for (i, &start) in bounds.iter().enumerate() {
        let end = bounds.get(i + 1).map_or(to, |next| next - 1);
        let src = source.clone();
        crate::offload::run(move || changes::check_range(&src, start, end))?;
        let seg_plan = if bounds.len() == 1 {
            plan.clone()
        } else {
            let src = source.clone();
            let present = crate::offload::run(move || changes::columns_at(&src, start))?;
            plan.restricted_to(&present).ok_or_else(|| LakeError::Gap {
                reason: format!(
                    "Delta table \"{}\" did not have all primary key columns at version {start}",
                    source.location.display()
                ),
            })?
        };
        out.push(Segment {
            from: start,
            to: end,
            plan: seg_plan,
        });
    }
    Ok(out)
}

/// One round of staged changes: the plan their rows follow and where the rows come from.
pub struct Step {
    pub plan: ColumnsPlan,
    pub parts: Vec<StagePart>,
}

/// The change feed of each segment, one step each.
fn cdf_steps(source: &DeltaSource, segments: Vec<Segment>, null_bytes: NullBytes) -> Vec<Step> {
    segments
        .into_iter()
        .map(|seg| {
            let (src, columns, key) = (
                source.clone(),
                seg.plan.columns.clone(),
                seg.plan.key.clone(),
            );
            let (from, to) = (seg.from, seg.to);
            let part = StagePart::all(&seg.plan, move || {
                changes::start(src, columns, key, null_bytes, from, to)
            });
            Step {
                plan: seg.plan,
                parts: vec![part],
            }
        })
        .collect()
}

/// The changes since `synced` derived from the data files: the keys of files gone since then
/// (deletes) and the rows of files new since then (upserts), in one step.
fn file_steps(
    source: &DeltaSource,
    plan: &ColumnsPlan,
    synced: i64,
    null_bytes: NullBytes,
) -> Result<Vec<Step>> {
    let src = source.clone();
    let diff = match crate::offload::run(move || files::diff(&src, synced))? {
        Some(d) if !d.is_empty() => std::sync::Arc::new(d),
        _ => return Ok(Vec::new()), // only compaction, or nothing at all
    };
    let mut parts = Vec::new();
    if !diff.gone.is_empty() {
        let key_columns: Vec<_> = plan.key.iter().map(|&k| plan.columns[k].clone()).collect();
        let (src, d) = (source.clone(), diff.clone());
        parts.push(StagePart {
            columns: key_columns.iter().map(|c| c.name.clone()).collect(),
            stream: Box::new(move || files::start_gone(src, &d, key_columns, null_bytes)),
        });
    }
    if !diff.new.is_empty() {
        let (src, d) = (source.clone(), diff.clone());
        let (columns, key) = (plan.columns.clone(), plan.key.clone());
        parts.push(StagePart::all(plan, move || {
            files::start_new(src, &d, columns, key, null_bytes)
        }));
    }
    Ok(vec![Step {
        plan: plan.clone(),
        parts,
    }])
}
