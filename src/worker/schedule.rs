//! The `schedule` option: an interval after each sync's start (`"5 minutes"`, `"1 hour"`), in
//! Postgres' own interval syntax. When a sync is due is computed in SQL by the scheduler and the
//! status view from the spec's last start, so no "next run" is stored.

use crate::error::{LakeError, Result};
use pgrx::prelude::*;

/// Checks that `schedule` is an interval above zero and at most a year, as Postgres reads
/// intervals (a longer one could overflow the next sync's time).
pub fn check(schedule: &str) -> Result<()> {
    let hint = "Write an interval such as \"30 seconds\", \"5 minutes\" or \"1 day\" (cron expressions are not supported yet).";
    let text = schedule.to_string();
    let positive = crate::subxact::run(false, move || {
        Spi::get_one_with_args::<bool>(
            "SELECT $1::pg_catalog.interval OPERATOR(pg_catalog.>) '0'::pg_catalog.interval \
             AND $1::pg_catalog.interval OPERATOR(pg_catalog.<=) '1 year'::pg_catalog.interval",
            &[text.as_str().into()],
        )
        .map_err(|e| LakeError::Internal(e.to_string()))
    });
    match positive {
        Ok(Ok(Some(true))) => Ok(()),
        Ok(Err(e)) => Err(e),
        _ => Err(LakeError::invalid_with_hint(
            format!("option \"schedule\" must be an interval from 1 microsecond to 1 year, not \"{schedule}\""),
            hint,
        )),
    }
}
