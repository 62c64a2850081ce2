//! Wall-clock time as the program writes it: Unix seconds (annotations,
//! token expiries, records) and RFC 3339 UTC text (ExecCredentials, logs).
//! A leaf: it imports nothing of the crate.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in whole seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Now, in milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The last second RFC 3339 with a four-digit year can write:
/// 9999-12-31T23:59:59Z.
pub const RFC3339_MAX: u64 = 253_402_300_799;

/// Unix seconds as RFC 3339 UTC (`2024-01-31T12:00:00Z`); a later time than
/// [`RFC3339_MAX`] (a token's `exp` is the IdP's word) is written as that,
/// since kubectl refuses five-digit years.
pub fn rfc3339(secs: u64) -> String {
    let secs = secs.min(RFC3339_MAX);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_735_689_599), "2024-12-31T23:59:59Z");
    }

    #[test]
    fn rfc3339_stops_at_four_digit_years() {
        assert_eq!(rfc3339(RFC3339_MAX), "9999-12-31T23:59:59Z");
        assert_eq!(rfc3339(u64::MAX), "9999-12-31T23:59:59Z");
    }

    /// Days since 1970 of a civil date (an independent restatement).
    fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
        era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468
    }

    fn seconds_of(ts: &str) -> u64 {
        let n = |r: std::ops::Range<usize>| ts[r].parse::<i64>().unwrap();
        assert_eq!(
            (ts.len(), &ts[4..5], &ts[10..11], &ts[19..]),
            (20, "-", "T", "Z"),
            "{ts}"
        );
        let days = days_from_civil(n(0..4), n(5..7), n(8..10));
        (days * 86_400 + n(11..13) * 3600 + n(14..16) * 60 + n(17..19)) as u64
    }

    proptest! {
        /// Every expiry is written as RFC 3339 kubectl can read
        /// (four-digit years) that turns back into the same second, or
        /// the last one.
        #[test]
        fn rfc3339_turns_back_into_the_second(secs in any::<u64>(), small in 0..=RFC3339_MAX) {
            prop_assert_eq!(seconds_of(&rfc3339(small)), small);
            prop_assert_eq!(seconds_of(&rfc3339(secs)), secs.min(RFC3339_MAX));
        }
    }
}
