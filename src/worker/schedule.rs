//! The `schedule` option: when the background worker syncs a SNAPSHOT or TRIGGERED table by
//! itself. Either an interval after each sync's start (`"5 minutes"`, `"1 hour"`), in Postgres'
//! own interval syntax, or a 5-field cron expression (`"*/15 * * * *"`, `"0 3 * * 1-5"`) or a
//! cron nickname (`"@hourly"`), evaluated in UTC as pg_cron does by default. When a sync is due
//! is computed in SQL (`lakesync.next_sync`) from the spec's last start, so no "next run" is
//! stored.

use crate::error::{LakeError, Result};
use crate::types::temporal::{pg_timestamp, PG_EPOCH_MICROS};
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use pgrx::datum::TimestampWithTimeZone;
use pgrx::prelude::*;

const HINT: &str = "Write an interval such as \"30 seconds\", \"5 minutes\" or \"1 day\", or a 5-field cron expression (minute hour day-of-month month day-of-week, in UTC) such as \"*/15 * * * *\" or \"0 3 * * 1-5\".";

/// Whether `schedule` looks like cron rather than an interval — five fields, or a nickname
/// (`@daily`; Postgres' own `@ 1 day` interval form has a space after the `@`) — for the error
/// message only: a schedule is cron when it parses as cron, and an interval otherwise (some
/// intervals have five fields too: `1 mon 2 days 03:00:00`).
fn looks_like_cron(schedule: &str) -> bool {
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
/// overflow the next sync's time). Cron needs the 0.5.0 catalog (`lakesync.cron_next`): with
/// the library upgraded and `ALTER EXTENSION … UPDATE` not run yet, the catalog's functions
/// would read it as an interval.
pub fn check(schedule: &str) -> Result<()> {
    match parse_cron(schedule) {
        Ok(cron) => {
            if !cron_in_catalog()? {
                return Err(LakeError::invalid_with_hint(
                    format!("cron schedule \"{schedule}\" needs pg_lakesync 0.5.0"),
                    "Run ALTER EXTENSION pg_lakesync UPDATE first, or use an interval.",
                ));
            }
            let now = chrono::Utc::now();
            return match cron.find_next_occurrence(&now, false) {
                Ok(_) => Ok(()),
                Err(_) => Err(LakeError::invalid_with_hint(
                    format!("cron schedule \"{schedule}\" never fires"),
                    HINT,
                )),
            };
        }
        // Postgres' interval input skips `*` and `/` ('61 * * * *' is 61 seconds): a mistyped
        // cron expression must not become an interval.
        Err(e)
            if schedule.contains(['*', '/', '?', '#'])
                || (looks_like_cron(schedule)
                    && (schedule.contains(',') || !is_interval(schedule))) =>
        {
            return Err(LakeError::invalid_with_hint(
                format!("option \"schedule\" is not a valid cron expression: \"{schedule}\" ({e})"),
                HINT,
            ));
        }
        Err(_) => {}
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

/// Whether Postgres reads `text` as an interval.
fn is_interval(text: &str) -> bool {
    let text = text.to_string();
    matches!(
        crate::subxact::run(false, move || {
            Spi::get_one_with_args::<bool>(
                "SELECT $1::pg_catalog.interval IS NOT NULL",
                &[text.as_str().into()],
            )
            .map_err(|e| LakeError::Internal(e.to_string()))
        }),
        Ok(Ok(Some(true)))
    )
}

/// Whether the installed catalog evaluates cron schedules (0.5.0 and later).
fn cron_in_catalog() -> Result<bool> {
    Spi::get_one::<bool>(
        "SELECT pg_catalog.to_regprocedure('lakesync.cron_next(pg_catalog.text, pg_catalog.timestamptz)') IS NOT NULL",
    )
    .map(|b| b.unwrap_or(false))
    .map_err(|e| LakeError::Internal(e.to_string()))
}

/// The first time after `after` that the cron `schedule` fires ('infinity' when it never does
/// again); NULL when `schedule` does not parse as cron (an interval: the caller adds it).
/// SQL `lakesync.cron_next(text, timestamptz)`, created in src/status.sql.
#[pg_extern(sql = false)]
fn lakesync_cron_next(
    schedule: &str,
    after: TimestampWithTimeZone,
) -> Option<TimestampWithTimeZone> {
    let cron = parse_cron(schedule).ok()?;
    let next = || {
        let us = pg_sys::TimestampTz::from(after).checked_add(PG_EPOCH_MICROS)?;
        let start = chrono::DateTime::<chrono::Utc>::from_timestamp_micros(us)?;
        let next = cron.find_next_occurrence(&start, false).ok()?;
        TimestampWithTimeZone::try_from(pg_timestamp(next.timestamp_micros())?).ok()
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
        for cron in ["*/5 * * * *", "@hourly", "0 3 * * 1-5"] {
            assert!(parse_cron(cron).is_ok(), "{cron}");
        }
        // Intervals, five fields or not.
        for interval in [
            "@ 1 day",
            "5 minutes",
            "1 day 2 hours",
            "@ 1 day 2 hours",
            "1 mon 2 days 03:00:00",
        ] {
            assert!(parse_cron(interval).is_err(), "{interval}");
            assert!(is_interval(interval), "{interval}");
            assert!(check(interval).is_ok(), "{interval}");
        }
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
