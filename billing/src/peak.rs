//! Peak and off-peak periods, evaluated in the account's billing time zone across midnight and DST.
//!
//! An off-peak window is a daily span of local wall-clock time (`19:00-07:00` wraps midnight).
//! Whether an instant is off-peak depends only on its local time of day, so the period can change
//! at a window endpoint or at a DST transition (when the wall clock jumps over or back across an
//! endpoint). [`OffPeakWindow::next_change`] finds the next instant where it may change; rating's
//! `split` mode walks a call from one such instant to the next.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Days, NaiveTime, Offset, TimeDelta, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Seconds in a civil day.
const DAY_S: u32 = 86_400;

/// How far ahead [`OffPeakWindow::next_change`] looks for a DST transition. Window endpoints
/// recur every local day, so a change is always found within this horizon.
const TRANSITION_HORIZON_S: i64 = 2 * 86_400;

/// Which price set applies to a stretch of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Period {
    /// The rate has no off-peak prices (or the tariff no off-peak window): one price set.
    Standard,
    Peak,
    OffPeak,
}

impl Period {
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Standard => "standard",
            Period::Peak => "peak",
            Period::OffPeak => "off-peak",
        }
    }
}

/// A daily off-peak span `[start, end)` of local time; `start > end` wraps midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OffPeakWindow {
    start_s: u32,
    end_s: u32,
}

impl OffPeakWindow {
    /// A window from `start` to `end` local time. They must differ: a window that is always or
    /// never off-peak is expressed by the rate's prices, not by the schedule.
    pub fn new(start: NaiveTime, end: NaiveTime) -> Result<OffPeakWindow, String> {
        let start_s = start.num_seconds_from_midnight();
        let end_s = end.num_seconds_from_midnight();
        if start_s == end_s {
            return Err("off-peak window start and end must differ".to_string());
        }
        Ok(OffPeakWindow { start_s, end_s })
    }

    pub fn start(&self) -> NaiveTime {
        seconds_to_time(self.start_s)
    }

    pub fn end(&self) -> NaiveTime {
        seconds_to_time(self.end_s)
    }

    /// Whether a local second of the day is inside the window.
    pub fn contains_local_second(&self, second_of_day: u32) -> bool {
        if self.start_s < self.end_s {
            self.start_s <= second_of_day && second_of_day < self.end_s
        } else {
            second_of_day >= self.start_s || second_of_day < self.end_s
        }
    }

    /// The period at `instant`, judged by its wall-clock time in `tz`.
    pub fn period_at(&self, tz: Tz, instant: DateTime<Utc>) -> Period {
        let local = instant.with_timezone(&tz);
        if self.contains_local_second(local.num_seconds_from_midnight()) {
            Period::OffPeak
        } else {
            Period::Peak
        }
    }

    /// The earliest instant after `after` at which the period may change: a window endpoint
    /// (both occurrences when the autumn change repeats it) or a DST transition. An instant
    /// returned here where the period does not actually change is harmless to callers.
    pub fn next_change(&self, tz: Tz, after: DateTime<Utc>) -> DateTime<Utc> {
        let mut best: Option<DateTime<Utc>> = None;
        let mut consider = |candidate: DateTime<Utc>| {
            if candidate > after && best.is_none_or(|b| candidate < b) {
                best = Some(candidate);
            }
        };
        let local_date = after.with_timezone(&tz).date_naive();
        let days = [
            local_date.checked_sub_days(Days::new(1)),
            Some(local_date),
            local_date.checked_add_days(Days::new(1)),
            local_date.checked_add_days(Days::new(2)),
        ];
        for date in days.into_iter().flatten() {
            for endpoint in [self.start(), self.end()] {
                let naive = date.and_time(endpoint);
                match tz.from_local_datetime(&naive) {
                    chrono::LocalResult::Single(t) => consider(t.with_timezone(&Utc)),
                    chrono::LocalResult::Ambiguous(first, second) => {
                        consider(first.with_timezone(&Utc));
                        consider(second.with_timezone(&Utc));
                    }
                    // The endpoint falls in a spring-forward gap: the wall clock passes it at
                    // the transition itself, which the search below finds.
                    chrono::LocalResult::None => {}
                }
            }
        }
        if let Some(transition) = first_offset_change(tz, after, TRANSITION_HORIZON_S) {
            consider(transition);
        }
        // Endpoints recur daily, so a candidate within two days always exists; a day later is
        // a safe fallback that still makes progress for a caller walking a call.
        best.unwrap_or(after + TimeDelta::seconds(i64::from(DAY_S)))
    }
}

/// The first instant in `(after, after + horizon_s]` at which `tz`'s UTC offset differs from
/// the offset at `after`, to the second. Assumes at most one transition inside the horizon,
/// which holds for every zone in the tz database with a two-day horizon.
pub fn first_offset_change(tz: Tz, after: DateTime<Utc>, horizon_s: i64) -> Option<DateTime<Utc>> {
    // Transitions fall on whole seconds, so the search runs on Unix seconds.
    let offset_at =
        |unix_s: i64| DateTime::from_timestamp(unix_s, 0).map(|t| tz.offset_from_utc_datetime(&t.naive_utc()).fix());
    let mut lo = after.timestamp();
    let start_offset = offset_at(lo)?;
    let mut hi = lo.checked_add(horizon_s)?;
    if offset_at(hi)? == start_offset {
        return None;
    }
    // Invariant: offset(lo) == start_offset != offset(hi); halve until they are 1 s apart.
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if offset_at(mid)? == start_offset {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    DateTime::from_timestamp(hi, 0)
}

fn seconds_to_time(second_of_day: u32) -> NaiveTime {
    // Windows are built from a NaiveTime's own seconds, always < 86,400, so this is valid.
    NaiveTime::from_num_seconds_from_midnight_opt(second_of_day % DAY_S, 0).expect("second of day is below 86,400")
}

impl fmt::Display for OffPeakWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start().format("%H:%M"), self.end().format("%H:%M"))
    }
}

impl FromStr for OffPeakWindow {
    type Err = String;

    /// Parses `HH:MM-HH:MM`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some((start, end)) = s.split_once('-') else {
            return Err(format!("off-peak window '{s}' is not HH:MM-HH:MM"));
        };
        let parse = |part: &str| {
            NaiveTime::parse_from_str(part.trim(), "%H:%M")
                .map_err(|_| format!("off-peak window '{s}': '{part}' is not HH:MM"))
        };
        OffPeakWindow::new(parse(start)?, parse(end)?)
    }
}

impl Serialize for OffPeakWindow {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for OffPeakWindow {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        OffPeakWindow::from_str(&text).map_err(serde::de::Error::custom)
    }
}

/// Parses an IANA time zone name such as `Europe/Berlin`.
pub fn parse_timezone(name: &str) -> Result<Tz, String> {
    name.parse::<Tz>()
        .map_err(|_| format!("'{name}' is not an IANA time zone name"))
}

/// Serde for a `chrono_tz::Tz` as its IANA name, for events that carry a billing time zone.
pub mod tz_name {
    use std::str::FromStr;

    use chrono_tz::Tz;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(tz: &Tz, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(tz.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Tz, D::Error> {
        let name = String::deserialize(deserializer)?;
        Tz::from_str(&name).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        // Test literals are valid RFC 3339.
        DateTime::parse_from_rfc3339(s)
            .expect("test literal is RFC 3339")
            .with_timezone(&Utc)
    }

    fn window(s: &str) -> OffPeakWindow {
        OffPeakWindow::from_str(s).expect("test literal is a window")
    }

    #[test]
    fn wrapping_window_covers_the_night() {
        let w = window("19:00-07:00");
        let tz = chrono_tz::Europe::Berlin;
        assert_eq!(w.period_at(tz, utc("2024-01-10T17:59:59Z")), Period::Peak);
        assert_eq!(w.period_at(tz, utc("2024-01-10T18:00:00Z")), Period::OffPeak);
        assert_eq!(w.period_at(tz, utc("2024-01-10T23:30:00Z")), Period::OffPeak);
        assert_eq!(w.period_at(tz, utc("2024-01-11T06:00:00Z")), Period::Peak);
    }

    #[test]
    fn next_change_finds_the_endpoint_in_local_time() {
        let w = window("19:00-07:00");
        let tz = chrono_tz::Europe::Berlin;
        // 18:50 CEST is 16:50 UTC; 19:00 CEST is 17:00 UTC.
        assert_eq!(
            w.next_change(tz, utc("2024-07-01T16:50:00Z")),
            utc("2024-07-01T17:00:00Z")
        );
        assert_eq!(
            w.next_change(tz, utc("2024-07-01T17:00:00Z")),
            utc("2024-07-02T05:00:00Z")
        );
    }

    #[test]
    fn an_endpoint_inside_the_spring_gap_changes_at_the_transition() {
        // Berlin jumps from 02:00 CET to 03:00 CEST at 01:00 UTC on 2024-03-31.
        let w = window("02:30-06:00");
        let tz = chrono_tz::Europe::Berlin;
        let change = w.next_change(tz, utc("2024-03-31T00:10:00Z"));
        assert_eq!(change, utc("2024-03-31T01:00:00Z"));
        assert_eq!(w.period_at(tz, utc("2024-03-31T00:59:59Z")), Period::Peak);
        assert_eq!(w.period_at(tz, change), Period::OffPeak);
    }

    #[test]
    fn an_endpoint_repeated_in_autumn_is_a_change_both_times() {
        // Berlin goes back from 03:00 CEST to 02:00 CET at 01:00 UTC on 2024-10-27, so 02:30
        // local happens at 00:30 UTC and again at 01:30 UTC.
        let w = window("02:30-06:00");
        let tz = chrono_tz::Europe::Berlin;
        let first = w.next_change(tz, utc("2024-10-27T00:00:00Z"));
        assert_eq!(first, utc("2024-10-27T00:30:00Z"));
        let transition = w.next_change(tz, first);
        assert_eq!(transition, utc("2024-10-27T01:00:00Z"));
        assert_eq!(w.period_at(tz, transition), Period::Peak);
        let second = w.next_change(tz, transition);
        assert_eq!(second, utc("2024-10-27T01:30:00Z"));
        assert_eq!(w.period_at(tz, second), Period::OffPeak);
    }

    #[test]
    fn windows_parse_and_print() {
        assert_eq!(window("19:00-07:00").to_string(), "19:00-07:00");
        assert!(OffPeakWindow::from_str("19:00").is_err());
        assert!(OffPeakWindow::from_str("25:00-07:00").is_err());
        assert!(OffPeakWindow::from_str("07:00-07:00").is_err());
    }
}
