//! The two civil-time rules the importers need, without a timezone database: US Eastern (MTA)
//! and Australian Eastern (Melbourne), with their current daylight-saving rules.

use chrono::{Datelike, NaiveDate, NaiveDateTime};

fn nth_sunday(year: i32, month: u32, n: u32) -> NaiveDate {
    let first = NaiveDate::from_ymd_opt(year, month, 1).unwrap_or_default();
    let offset = (7 - first.weekday().num_days_from_sunday()) % 7;
    first + chrono::Duration::days((offset + 7 * (n - 1)) as i64)
}

/// Epoch ms of a New York local time (EST −5, EDT −4 from the second Sunday of March 02:00 to
/// the first Sunday of November 02:00, the rule since 2007).
pub fn new_york_ms(t: NaiveDateTime) -> i64 {
    let y = t.year();
    let start = nth_sunday(y, 3, 2).and_hms_opt(2, 0, 0).unwrap_or_default();
    let end = nth_sunday(y, 11, 1).and_hms_opt(2, 0, 0).unwrap_or_default();
    let offset_h = if t >= start && t < end { -4 } else { -5 };
    (t - chrono::Duration::hours(offset_h))
        .and_utc()
        .timestamp_millis()
}

/// Epoch ms of a Melbourne local time (AEST +10, AEDT +11 from the first Sunday of October 02:00
/// to the first Sunday of April 03:00, the rule since 2008).
pub fn melbourne_ms(t: NaiveDateTime) -> i64 {
    let y = t.year();
    let end = nth_sunday(y, 4, 1).and_hms_opt(3, 0, 0).unwrap_or_default();
    let start = nth_sunday(y, 10, 1).and_hms_opt(2, 0, 0).unwrap_or_default();
    let offset_h = if t < end || t >= start { 11 } else { 10 };
    (t - chrono::Duration::hours(offset_h))
        .and_utc()
        .timestamp_millis()
}

/// Epoch ms of a Shanghai local time (+8, no daylight saving).
pub fn shanghai_ms(t: NaiveDateTime) -> i64 {
    (t - chrono::Duration::hours(8)).and_utc().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").unwrap()
    }

    #[test]
    fn new_york_switches_on_the_right_sundays() {
        // 2015: DST 8 March – 1 November.
        assert_eq!(new_york_ms(t("2015-09-12 00:00:00")), 1_442_030_400_000); // 04:00Z
        assert_eq!(new_york_ms(t("2015-01-10 00:00:00")), 1_420_866_000_000); // 05:00Z
        assert_eq!(nth_sunday(2015, 3, 2).weekday(), chrono::Weekday::Sun);
        assert_eq!(nth_sunday(2015, 3, 2).day(), 8);
        assert_eq!(nth_sunday(2015, 11, 1).day(), 1);
    }

    #[test]
    fn melbourne_is_plus_ten_in_may_and_eleven_in_january() {
        assert_eq!(melbourne_ms(t("2019-05-02 00:00:00")), 1_556_719_200_000); // 1 May 14:00Z
        assert_eq!(melbourne_ms(t("2019-01-02 00:00:00")), 1_546_347_600_000); // 1 Jan 13:00Z
    }
}
