//! Deterministic inputs for `ledgerline bench rating`, and the naive matcher it is compared with.
//!
//! Pure builders only: a deck of N distinct prefixes and M legs from a seed (SplitMix64, so the
//! same seed gives the same deck on every machine), and a baseline that finds the longest
//! prefix by scanning every rate. Timing is the binary's business.

use std::collections::HashSet;

use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;
use rust_decimal::Decimal;
use uuid::Uuid;

use crate::money::Posting;
use crate::peak::OffPeakWindow;
use crate::rating::{self, Leg, PricingContext};
use crate::tariff::{CompiledTariff, Crossing, PeriodPrices, Prefix, Rate, TariffVersion};

/// The deck size the issue asks the benchmark to use.
pub const BENCH_PREFIX_COUNT: usize = 50_000;

/// The number of legs the benchmark rates with the index.
pub const BENCH_LEG_COUNT: usize = 1_000_000;

/// The seed of the published benchmark figures.
pub const BENCH_SEED: u64 = 0x1ed9_e71e;

/// SplitMix64: tiny, fast and good enough to spread prefixes and durations.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..bound` (`bound` > 0; a zero bound gives 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 {
            0
        } else {
            self.next_u64() % bound
        }
    }

    fn digit(&mut self) -> char {
        // below(10) < 10.
        char::from(b'0' + self.below(10) as u8)
    }
}

/// A deck of `prefix_count` distinct prefixes shaped like a carrier's: a few hundred country
/// codes (1 to 3 digits) extended by 1 to 6 digits, mixed interval schemes, some connection
/// fees, free seconds, grace periods, surcharges and off-peak prices.
pub fn deck(seed: u64, prefix_count: usize) -> TariffVersion {
    let mut rng = SplitMix64::new(seed);
    let mut countries = Vec::with_capacity(300);
    while countries.len() < 300 {
        let len = 1 + rng.below(3) as usize;
        let mut code = String::with_capacity(len);
        // Country codes never start with 0.
        code.push(char::from(b'1' + rng.below(9) as u8));
        for _ in 1..len {
            code.push(rng.digit());
        }
        countries.push(code);
    }
    let schemes = [(60, 60), (30, 6), (1, 1), (60, 1), (30, 30)];
    let mut seen = HashSet::with_capacity(prefix_count);
    let mut rates = Vec::with_capacity(prefix_count);
    while rates.len() < prefix_count {
        let mut text = countries[rng.below(countries.len() as u64) as usize].clone();
        for _ in 0..(1 + rng.below(6)) {
            text.push(rng.digit());
        }
        if !seen.insert(text.clone()) {
            continue;
        }
        // Generated prefixes are 2 to 9 digits.
        let prefix = Prefix::parse(&text).expect("generated prefix is valid");
        let (first_interval_s, next_interval_s) = schemes[rng.below(schemes.len() as u64) as usize];
        let price = Decimal::new(100 + rng.below(49_900) as i64, 5);
        let mut rate = Rate::simple(prefix, first_interval_s, next_interval_s, price);
        if rng.below(4) == 0 {
            rate.next_price_per_minute = Decimal::new(100 + rng.below(49_900) as i64, 5);
        }
        if rng.below(5) == 0 {
            rate.connection_fee = Decimal::new(rng.below(500) as i64, 4);
        }
        if rng.below(10) == 0 {
            rate.free_seconds = rng.below(30) as u32;
        }
        if rng.below(3) == 0 {
            rate.grace_period_s = rng.below(6) as u32;
        }
        if rng.below(10) == 0 {
            rate.post_call_surcharge_pct = Decimal::new(rng.below(2_000) as i64, 2);
        }
        if rng.below(5) == 0 {
            let offpeak = Decimal::new(50 + rng.below(20_000) as i64, 5);
            rate.offpeak = Some(PeriodPrices {
                first_price_per_minute: offpeak,
                next_price_per_minute: offpeak,
            });
        }
        rates.push(rate);
    }
    TariffVersion {
        tariff_id: Uuid::from_u64_pair(seed, prefix_count as u64),
        version: 1,
        effective_from: DateTime::<Utc>::MIN_UTC,
        currency: "EUR".to_string(),
        rates,
        // 19:00 and 07:00 differ, so the window is valid.
        offpeak_window: OffPeakWindow::new(
            chrono::NaiveTime::MIN + TimeDelta::hours(19),
            chrono::NaiveTime::MIN + TimeDelta::hours(7),
        )
        .ok(),
        crossing: Crossing::WholeCall,
        posting: Posting::default(),
    }
}

/// A leg as the benchmark holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchLeg {
    pub destination: String,
    pub answered_at: DateTime<Utc>,
    pub duration_s: u32,
}

impl BenchLeg {
    pub fn as_leg(&self) -> Leg<'_> {
        Leg {
            destination: &self.destination,
            answered_at: self.answered_at,
            duration_s: self.duration_s,
        }
    }
}

/// `count` legs to numbers under the deck's prefixes (12 digits, about 1 in 50 to a random
/// number that may match nothing), answered during March 2024, lasting 0 to 3,600 s.
pub fn legs(seed: u64, count: usize, deck: &TariffVersion) -> Vec<BenchLeg> {
    let mut rng = SplitMix64::new(seed ^ 0x5eed_1e95);
    // 2024-03-01T00:00:00Z: a fixed epoch, never the clock.
    let base = DateTime::from_timestamp(1_709_251_200, 0).unwrap_or(DateTime::<Utc>::MIN_UTC);
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let mut destination = String::with_capacity(13);
        destination.push('+');
        if deck.rates.is_empty() || rng.below(50) == 0 {
            destination.push(char::from(b'1' + rng.below(9) as u8));
        } else {
            let rate = &deck.rates[rng.below(deck.rates.len() as u64) as usize];
            destination.push_str(&rate.prefix.to_string());
        }
        while destination.len() < 13 {
            destination.push(rng.digit());
        }
        let answered_at = base + TimeDelta::seconds(rng.below(31 * 86_400) as i64);
        let duration_s = rng.below(3_601) as u32;
        out.push(BenchLeg {
            destination,
            answered_at,
            duration_s,
        });
    }
    out
}

/// The baseline: finds the longest prefix by looking at every rate.
#[derive(Debug, Clone)]
pub struct NaiveScan<'t> {
    prefixes: Vec<(Vec<u8>, &'t Rate)>,
}

impl<'t> NaiveScan<'t> {
    pub fn new(version: &'t TariffVersion) -> NaiveScan<'t> {
        let prefixes = version
            .rates
            .iter()
            .map(|rate| (rate.prefix.to_ascii(), rate))
            .collect();
        NaiveScan { prefixes }
    }

    pub fn lookup(&self, destination: &str) -> Option<&'t Rate> {
        let digits = crate::tariff::normalize_destination(destination)?;
        let mut best: Option<(usize, &'t Rate)> = None;
        for (prefix, rate) in &self.prefixes {
            if digits.starts_with(prefix) && best.is_none_or(|(len, _)| prefix.len() > len) {
                best = Some((prefix.len(), rate));
            }
        }
        best.map(|(_, rate)| rate)
    }
}

/// What rating a batch of legs produced: enough to check two matchers agree and to keep the
/// optimizer from skipping the work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BatchSummary {
    pub rated: usize,
    pub unrated: usize,
    pub total_amount: Decimal,
    pub total_billed_s: u64,
}

impl BatchSummary {
    fn add(&mut self, outcome: Result<rating::Charge, rating::RatingError>) {
        match outcome {
            Ok(charge) => {
                self.rated += 1;
                self.total_amount += charge.amount;
                self.total_billed_s += u64::from(charge.billed_s);
            }
            Err(_) => self.unrated += 1,
        }
    }
}

/// Rates legs with the tariff's prefix index.
pub fn rate_with_index(tariff: &CompiledTariff, legs: &[BenchLeg], tz: Tz) -> BatchSummary {
    let mut summary = BatchSummary::default();
    for leg in legs {
        summary.add(rating::rate_leg(tariff, &leg.as_leg(), tz));
    }
    summary
}

/// Rates legs with the naive scan, and otherwise the same pricing.
pub fn rate_with_scan(version: &TariffVersion, scan: &NaiveScan<'_>, legs: &[BenchLeg], tz: Tz) -> BatchSummary {
    let mut summary = BatchSummary::default();
    for leg in legs {
        let outcome = match scan.lookup(&leg.destination) {
            Some(rate) => rating::price(&PricingContext::new(version, rate, tz), leg.answered_at, leg.duration_s),
            None => Err(rating::RatingError::NoRate {
                destination: leg.destination.clone(),
            }),
        };
        summary.add(outcome);
    }
    summary
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deck_is_deterministic_valid_and_distinct() {
        let a = deck(7, 2_000);
        let b = deck(7, 2_000);
        assert_eq!(a, b);
        assert_eq!(a.rates.len(), 2_000);
        a.validate().expect("generated deck is valid");
    }

    #[test]
    fn index_and_scan_agree() {
        let version = deck(11, 3_000);
        let tariff = CompiledTariff::new(version.clone());
        let scan = NaiveScan::new(&version);
        let legs = legs(11, 2_000, &version);
        for leg in &legs {
            assert_eq!(
                tariff.lookup(&leg.destination).map(|r| r.prefix),
                scan.lookup(&leg.destination).map(|r| r.prefix),
                "{}",
                leg.destination
            );
        }
        let tz = chrono_tz::Europe::Berlin;
        let ours = rate_with_index(&tariff, &legs, tz);
        assert_eq!(ours, rate_with_scan(&version, &scan, &legs, tz));
        assert!(ours.rated > 1_900);
    }
}
