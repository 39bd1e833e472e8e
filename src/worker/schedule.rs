//! The `schedule` option: when the background worker syncs a SNAPSHOT or TRIGGERED table by
//! itself. Either an interval after each sync's start (`"5 minutes"`, `"1 hour"`), in Postgres'
//! own interval syntax, or a 5-field cron expression (`"*/15 * * * *"`, `"0 3 * * 1-5"`) or a
//! cron nickname (`"@hourly"`), evaluated in UTC as pg_cron does by default. When a sync is due
//! is computed in SQL (`lakesync.next_sync`) from the spec's last start, so no "next run" is
//! stored.

use crate::error::{LakeError, Result};
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use pgrx::datum::TimestampWithTimeZone;
use pgrx::prelude::*;

const HINT: &str = "Write an interval such as \"30 seconds\", \"5 minutes\" or \"1 day\", or a 5-field cron expression (minute hour day-of-month month day-of-week, in UTC) such as \"*/15 * * * *\" or \"0 3 * * 1-5\".";

/// Whether `schedule` is meant as cron rather than an interval: five fields, or a nickname
/// (`@daily`; Postgres' own `@ 1 day` interval form has a space after the `@`).
fn is_cron(schedule: &str) -> bool {
    let s = schedule.trim();
    s.split_whitespace().count() == 5
        || (s.starts_with('@') && s[1..].starts_with(|c: char| c.is_ascii_alphabetic()))
}

/// Parses a cron schedule as cron(8) reads it: five fields, no seconds or years; a day of month
/// and a day of week both restricted match either.
fn parse_cron(schedule: &str) -> std::result::Result<Cron, String> {
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
        .parse(schedule.trim())
        .map_err(|e| e.to_string())
}

/// Checks a schedule: a cron expression that fires at least once in the coming years, or an
/// interval above zero and at most a year, as Postgres reads intervals (a longer one could
/// overflow the next sync's time).
pub fn check(schedule: &str) -> Result<()> {
    if is_cron(schedule) {
        let cron = parse_cron(schedule).map_err(|e| {
            LakeError::invalid_with_hint(
                format!("option \"schedule\" is not a valid cron expression: \"{schedule}\" ({e})"),
                HINT,
            )
        })?;
        let now = chrono::Utc::now();
        return match cron.find_next_occurrence(&now, false) {
            Ok(_) => Ok(()),
            Err(_) => Err(LakeError::invalid_with_hint(
                format!("cron schedule \"{schedule}\" never fires"),
                HINT,
            )),
        };
    }
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
            format!("option \"schedule\" must be an interval from 1 microsecond to 1 year or a cron expression, not \"{schedule}\""),
            HINT,
        )),
    }
}

/// Microseconds between the Unix epoch and Postgres' (2000-01-01).
const PG_EPOCH_US: i64 = 946_684_800_000_000;

/// The first time after `after` that the cron `schedule` fires ('infinity' when it never does
/// again); NULL when `schedule` is not a cron expression (an interval: the caller adds it).
/// SQL `lakesync.cron_next(text, timestamptz)`, created in src/status.sql.
#[pg_extern(sql = false)]
fn lakesync_cron_next(schedule: &str, after: TimestampWithTimeZone) -> Option<TimestampWithTimeZone> {
    if !is_cron(schedule) {
        return None;
    }
    let next = || {
        let cron = parse_cron(schedule).ok()?;
        let us = pg_sys::TimestampTz::from(after).checked_add(PG_EPOCH_US)?;
        let start = chrono::DateTime::<chrono::Utc>::from_timestamp_micros(us)?;
        let next = cron.find_next_occurrence(&start, false).ok()?;
        TimestampWithTimeZone::try_from(next.timestamp_micros() - PG_EPOCH_US).ok()
    };
    Some(match after.is_finite() {
        true => next().unwrap_or_else(TimestampWithTimeZone::positive_infinity),
        false => after,
    })
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use super::*;

    #[pg_test]
    fn cron_and_interval_are_told_apart() {
        assert!(is_cron("*/5 * * * *"));
        assert!(is_cron("@hourly"));
        assert!(!is_cron("@ 1 day"));
        assert!(!is_cron("5 minutes"));
        assert!(!is_cron("1 day 2 hours"));
    }

    #[pg_test]
    fn cron_next_is_the_next_firing_in_utc() {
        let next = Spi::get_one::<String>(
            "SELECT (lakesync.cron_next('*/15 * * * *', '2026-12-02 10:07:30+00') \
             AT TIME ZONE 'UTC')::text",
        )
        .unwrap()
        .unwrap();
        assert_eq!(next, "2026-12-02 10:15:00");
        let next = Spi::get_one::<String>(
            "SELECT (lakesync.cron_next('0 3 * * 1-5', '2026-12-04 03:00:00+00') \
             AT TIME ZONE 'UTC')::text",
        )
        .unwrap()
        .unwrap();
        assert_eq!(next, "2026-12-07 03:00:00"); // Friday 03:00 -> Monday 03:00
        assert_eq!(
            Spi::get_one::<bool>("SELECT lakesync.cron_next('5 minutes', now()) IS NULL").unwrap(),
            Some(true)
        );
    }
}
