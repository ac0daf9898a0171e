//! Calls across DST changes (Europe/Berlin, America/New_York) and midnight, in both crossing modes.
//!
//! Each case puts an off-peak window endpoint near the change, so a rating engine that added
//! elapsed seconds to local wall-clock time (instead of walking real instants) would get a
//! different figure. Rate: 0.10/min peak, 0.04/min off-peak, 60/60.

use std::str::FromStr;

use billing::rating::{self, Leg};
use billing::tariff::{CompiledTariff, Crossing, PeriodPrices, Prefix, Rate, TariffVersion};
use billing::{OffPeakWindow, Period, Posting};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use rust_decimal::Decimal;
use uuid::Uuid;

fn d(s: &str) -> Decimal {
    Decimal::from_str(s).expect("test literal is a decimal")
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("test literal is RFC 3339")
        .with_timezone(&Utc)
}

fn tariff(window: &str, crossing: Crossing) -> CompiledTariff {
    let mut rate = Rate::simple(Prefix::parse("1").expect("valid prefix"), 60, 60, d("0.10"));
    rate.offpeak = Some(PeriodPrices {
        first_price_per_minute: d("0.04"),
        next_price_per_minute: d("0.04"),
    });
    let version = TariffVersion {
        tariff_id: Uuid::from_u128(3),
        version: 1,
        effective_from: at("2020-01-01T00:00:00Z"),
        currency: "USD".to_string(),
        rates: vec![rate],
        offpeak_window: Some(OffPeakWindow::from_str(window).expect("valid window")),
        crossing,
        posting: Posting::default(),
    };
    version.validate().expect("valid tariff");
    CompiledTariff::new(version)
}

/// Rates one call in both modes; returns (whole_call, split) and checks the split's lines.
fn rate_both(window: &str, tz: Tz, answered_at: &str, duration_s: u32) -> (Decimal, Decimal, Vec<(Period, u32)>) {
    let leg = Leg {
        destination: "12125550100",
        answered_at: at(answered_at),
        duration_s,
    };
    let whole = rating::rate_leg(&tariff(window, Crossing::WholeCall), &leg, tz).expect("rates");
    let split = rating::rate_leg(&tariff(window, Crossing::Split), &leg, tz).expect("rates");
    let mut periods: Vec<(Period, u32)> = Vec::new();
    for line in &split.explanation.lines {
        match periods.last_mut() {
            Some((period, seconds)) if *period == line.period => *seconds += line.seconds(),
            _ => periods.push((line.period, line.seconds())),
        }
    }
    assert_eq!(
        periods.iter().map(|(_, s)| *s).sum::<u32>(),
        split.billed_s,
        "split lines cover the billed time"
    );
    (whole.amount, split.amount, periods)
}

#[test]
fn berlin_spring_forward_shortens_the_night() {
    // 2024-03-31: 02:00 CET becomes 03:00 CEST at 01:00 UTC. Answered 01:30 CET, 2 h elapsed;
    // off-peak ends 03:30 local, which is only 1 h after the answer.
    let (whole, split, periods) = rate_both("19:00-03:30", chrono_tz::Europe::Berlin, "2024-03-31T00:30:00Z", 7200);
    assert_eq!(whole, d("4.80"));
    assert_eq!(split, d("8.40"));
    assert_eq!(periods, vec![(Period::OffPeak, 3600), (Period::Peak, 3600)]);
}

#[test]
fn berlin_fall_back_repeats_the_endpoint() {
    // 2024-10-27: 03:00 CEST becomes 02:00 CET at 01:00 UTC, so 02:30 local happens twice.
    // Answered 01:30 CEST (23:30 UTC), 2 h: off-peak 60 min, peak 30 min (02:30-03:00 CEST),
    // off-peak 30 min (02:00-02:30 CET).
    let (whole, split, periods) = rate_both("19:00-02:30", chrono_tz::Europe::Berlin, "2024-10-26T23:30:00Z", 7200);
    assert_eq!(whole, d("4.80"));
    assert_eq!(split, d("6.60"));
    assert_eq!(
        periods,
        vec![(Period::OffPeak, 3600), (Period::Peak, 1800), (Period::OffPeak, 1800)]
    );
}

#[test]
fn new_york_spring_forward_skips_the_endpoint() {
    // 2024-03-10: 02:00 EST becomes 03:00 EDT at 07:00 UTC; 02:30 never happens, so off-peak
    // ends at the jump. Answered 01:00 EST, 90 min: 60 off-peak, 30 peak.
    let (whole, split, periods) = rate_both(
        "22:00-02:30",
        chrono_tz::America::New_York,
        "2024-03-10T06:00:00Z",
        5400,
    );
    assert_eq!(whole, d("3.60"));
    assert_eq!(split, d("5.40"));
    assert_eq!(periods, vec![(Period::OffPeak, 3600), (Period::Peak, 1800)]);
}

#[test]
fn new_york_fall_back_returns_to_off_peak() {
    // 2024-11-03: 02:00 EDT becomes 01:00 EST at 06:00 UTC. Window ends 01:30. Answered
    // 00:30 EDT, 2 h: off-peak 60, peak 30 (01:30-02:00 EDT), off-peak 30 (01:00-01:30 EST).
    let (whole, split, periods) = rate_both(
        "19:00-01:30",
        chrono_tz::America::New_York,
        "2024-11-03T04:30:00Z",
        7200,
    );
    assert_eq!(whole, d("4.80"));
    assert_eq!(split, d("6.60"));
    assert_eq!(
        periods,
        vec![(Period::OffPeak, 3600), (Period::Peak, 1800), (Period::OffPeak, 1800)]
    );
}

#[test]
fn a_call_across_midnight_changes_period_at_local_midnight() {
    // Off-peak from local midnight; answered 23:50 EDT (03:50 UTC), 20 min.
    let (whole, split, periods) = rate_both(
        "00:00-06:00",
        chrono_tz::America::New_York,
        "2024-07-05T03:50:00Z",
        1200,
    );
    assert_eq!(whole, d("2.00"));
    assert_eq!(split, d("1.40"));
    assert_eq!(periods, vec![(Period::Peak, 600), (Period::OffPeak, 600)]);
}

#[test]
fn a_day_long_split_call_walks_every_boundary() {
    // 24 h from 12:00 CEST on the eve of the autumn change: 25 h of wall clock pass locally,
    // but 24 h of calls are billed; off-peak is 19:00-07:00 = 13 h that night (one repeated).
    let (_, split, periods) = rate_both("19:00-07:00", chrono_tz::Europe::Berlin, "2024-10-26T10:00:00Z", 86_400);
    assert_eq!(
        periods,
        vec![
            (Period::Peak, 7 * 3600),
            (Period::OffPeak, 13 * 3600),
            (Period::Peak, 4 * 3600)
        ]
    );
    assert_eq!(split, d("11") * d("60") * d("0.10") + d("13") * d("60") * d("0.04"));
}
