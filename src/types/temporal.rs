//! Dates and timestamps: Arrow counts from 1970-01-01, Postgres from 2000-01-01.

use chrono::{DateTime, NaiveDate};

/// Days from 1970-01-01 to 2000-01-01.
pub const PG_EPOCH_DAYS: i32 = 10_957;
/// Microseconds from 1970-01-01 to 2000-01-01.
pub const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

pub fn pg_date(days_since_1970: i32) -> Option<i32> {
    days_since_1970.checked_sub(PG_EPOCH_DAYS)
}

pub fn pg_timestamp(micros_since_1970: i64) -> Option<i64> {
    micros_since_1970.checked_sub(PG_EPOCH_MICROS)
}

/// ISO 8601 date, as Postgres' JSON output writes it.
pub fn date_text(days_since_1970: i32) -> String {
    match NaiveDate::from_ymd_opt(1970, 1, 1)
        .and_then(|d| d.checked_add_signed(chrono::TimeDelta::days(days_since_1970 as i64)))
    {
        Some(d) => d.format("%Y-%m-%d").to_string(),
        None => days_since_1970.to_string(),
    }
}

/// ISO 8601 timestamp as Postgres' to_json writes it: `2024-01-02T03:04:05.123456+00:00` for a
/// UTC-adjusted TIMESTAMP, no offset for TIMESTAMP_NTZ; fractional seconds only when present.
pub fn timestamp_text(micros_since_1970: i64, utc: bool) -> String {
    match DateTime::from_timestamp_micros(micros_since_1970) {
        Some(t) => {
            let t = t.naive_utc();
            let frac = micros_since_1970.rem_euclid(1_000_000);
            let mut s = t.format("%Y-%m-%dT%H:%M:%S").to_string();
            if frac != 0 {
                let f = format!(".{frac:06}");
                s.push_str(f.trim_end_matches('0'));
            }
            if utc {
                s.push_str("+00:00");
            }
            s
        }
        None => micros_since_1970.to_string(),
    }
}
