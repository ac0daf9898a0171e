//! Rating: a pure function from a leg and the tariff in force to a charge that explains itself.
//!
//! The rules (billing-reference.md):
//! - a call no longer than the grace period is free altogether, connection fee included;
//! - the free seconds come off the start of the call; if nothing remains the call is billed
//!   0 s and costs only its connection fee (it was connected and outlasted the grace period);
//! - otherwise the rest is rounded up to the first interval (the minimum billed duration), then
//!   up to whole next intervals;
//! - charge = connection fee + first interval at its price + next intervals at theirs, then the
//!   post-call surcharge, computed exactly and posted once through [`crate::money::post`].
//!
//! Peak/off-peak: `whole_call` prices the whole call by the period at its answer time; `split`
//! prices each billing interval by the period in which that interval starts (an interval that
//! straddles a boundary is priced by its start), after the free seconds have elapsed.
//!
//! Exactness: every line is `seconds x price_per_minute`, an exact product; the sum of lines
//! plus `60 x fee` is divided once (by 60, or by 6000 with the surcharge) and then posted.

use std::fmt::{self, Write as _};

use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use uuid::Uuid;

use crate::money::Posting;
use crate::peak::{OffPeakWindow, Period};
use crate::tariff::{CompiledTariff, Crossing, Prefix, Rate, TariffVersion};

/// The longest leg rating accepts and the longest call an authorization grants: one day.
pub const MAX_CALL_DURATION_S: u32 = 86_400;

const SECONDS_PER_MINUTE: Decimal = Decimal::from_parts(60, 0, 0, false, 0);
const ONE_HUNDRED: Decimal = Decimal::from_parts(100, 0, 0, false, 0);
const PERCENT_MINUTES: Decimal = Decimal::from_parts(6_000, 0, 0, false, 0);

/// A leg to rate: where it went, when it was answered and how long it lasted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leg<'a> {
    pub destination: &'a str,
    pub answered_at: DateTime<Utc>,
    pub duration_s: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RatingError {
    #[error("destination '{destination}' is not an E.164 number (digits, optional leading +)")]
    InvalidDestination { destination: String },
    #[error("no rate matches destination '{destination}'")]
    NoRate { destination: String },
    #[error("duration {duration_s} s exceeds the limit of {MAX_CALL_DURATION_S} s")]
    DurationTooLong { duration_s: u32 },
    #[error("amount out of range while rating")]
    Overflow,
}

/// Everything needed to price a call at one rate, borrowed from a tariff version or a rate card.
#[derive(Debug, Clone, Copy)]
pub struct PricingContext<'a> {
    pub tariff_id: Uuid,
    pub tariff_version: u32,
    pub rate: &'a Rate,
    pub offpeak_window: Option<OffPeakWindow>,
    pub crossing: Crossing,
    pub posting: Posting,
    /// The account's billing time zone, in which off-peak windows are read.
    pub billing_tz: Tz,
}

impl<'a> PricingContext<'a> {
    pub fn new(version: &'a TariffVersion, rate: &'a Rate, billing_tz: Tz) -> Self {
        PricingContext {
            tariff_id: version.tariff_id,
            tariff_version: version.version,
            rate,
            offpeak_window: version.offpeak_window,
            crossing: version.crossing,
            posting: version.posting,
            billing_tz,
        }
    }

    /// The off-peak window, if this rate has off-peak prices to apply in it.
    fn effective_window(&self) -> Option<OffPeakWindow> {
        match (&self.rate.offpeak, self.offpeak_window) {
            (Some(_), Some(window)) => Some(window),
            _ => None,
        }
    }

    fn prices(&self, period: Period) -> (Decimal, Decimal) {
        match (period, &self.rate.offpeak) {
            (Period::OffPeak, Some(offpeak)) => (offpeak.first_price_per_minute, offpeak.next_price_per_minute),
            _ => (self.rate.first_price_per_minute, self.rate.next_price_per_minute),
        }
    }
}

/// A rate with the terms of its tariff version, owned: what an authorization command carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateCard {
    pub tariff_id: Uuid,
    pub tariff_version: u32,
    pub currency: String,
    pub rate: Rate,
    pub offpeak_window: Option<OffPeakWindow>,
    pub crossing: Crossing,
    pub posting: Posting,
}

impl RateCard {
    /// The card for a destination from the tariff version in force.
    pub fn for_destination(tariff: &CompiledTariff, destination: &str) -> Result<RateCard, RatingError> {
        let rate = lookup(tariff, destination)?;
        Ok(RateCard {
            tariff_id: tariff.version.tariff_id,
            tariff_version: tariff.version.version,
            currency: tariff.version.currency.clone(),
            rate: rate.clone(),
            offpeak_window: tariff.version.offpeak_window,
            crossing: tariff.version.crossing,
            posting: tariff.version.posting,
        })
    }

    pub fn context(&self, billing_tz: Tz) -> PricingContext<'_> {
        PricingContext {
            tariff_id: self.tariff_id,
            tariff_version: self.tariff_version,
            rate: &self.rate,
            offpeak_window: self.offpeak_window,
            crossing: self.crossing,
            posting: self.posting,
            billing_tz,
        }
    }
}

/// Whether a line is the first interval or a run of next intervals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntervalKind {
    First,
    Next,
}

/// A run of equal billing intervals at one price.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChargeLine {
    pub kind: IntervalKind,
    pub period: Period,
    /// Where the run starts, in billed seconds from the end of the free seconds.
    pub start_offset_s: u32,
    pub interval_count: u32,
    pub interval_s: u32,
    pub price_per_minute: Decimal,
}

impl ChargeLine {
    pub fn seconds(&self) -> u32 {
        // Billed seconds of a leg are bounded by MAX_CALL_DURATION_S plus one interval.
        self.interval_count.saturating_mul(self.interval_s)
    }

    /// `seconds x price_per_minute`: the exact numerator of this line's amount.
    fn price_seconds(&self) -> Option<Decimal> {
        Decimal::from(self.seconds()).checked_mul(self.price_per_minute)
    }

    /// The exact amount of this line, before surcharge and posting.
    pub fn amount(&self) -> Decimal {
        // Bounded by the rate limits: seconds <= 2 days, price <= 10^6.
        self.price_seconds()
            .and_then(|n| n.checked_div(SECONDS_PER_MINUTE))
            .unwrap_or(Decimal::MAX)
    }
}

/// How the billed duration came about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BilledAs {
    /// Within the grace period: free, no connection fee.
    Grace,
    /// Entirely within the free seconds: connection fee only.
    FreeSeconds,
    /// Billed by intervals.
    Intervals,
}

/// Why a charge is what it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explanation {
    pub tariff_id: Uuid,
    pub tariff_version: u32,
    pub matched_prefix: Prefix,
    pub duration_s: u32,
    pub billed_as: BilledAs,
    pub grace_period_s: u32,
    pub free_seconds: u32,
    pub billed_s: u32,
    pub crossing: Crossing,
    pub lines: Vec<ChargeLine>,
    pub connection_fee: Decimal,
    pub surcharge_pct: Decimal,
    /// Exact amount before posting.
    pub amount_exact: Decimal,
    pub posting: Posting,
    pub amount: Decimal,
}

impl Explanation {
    /// Connection fee plus every line, before the surcharge.
    pub fn subtotal(&self) -> Decimal {
        let mut total = self.connection_fee;
        for line in &self.lines {
            total += line.amount();
        }
        total
    }

    /// The one-line human reading, e.g. for a CSV column or a support ticket.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(160);
        // Writing to a String cannot fail.
        let _ = self.write_to(&mut out);
        out
    }

    fn write_to(&self, out: &mut String) -> fmt::Result {
        write!(
            out,
            "prefix {} tariff v{}; {} s",
            self.matched_prefix, self.tariff_version, self.duration_s
        )?;
        match self.billed_as {
            BilledAs::Grace => {
                write!(out, " <= grace {} s: free", self.grace_period_s)?;
            }
            BilledAs::FreeSeconds => {
                write!(
                    out,
                    " within {} free s: billed 0 s; fee {}",
                    self.free_seconds, self.connection_fee
                )?;
            }
            BilledAs::Intervals => {
                if self.free_seconds > 0 {
                    write!(out, " - {} free s", self.free_seconds)?;
                }
                write!(out, ", billed {} s", self.billed_s)?;
                if self.crossing == Crossing::Split && self.lines.len() > 1 {
                    out.push_str(" (split)");
                }
                for line in &self.lines {
                    match line.kind {
                        IntervalKind::First => write!(out, "; first {} s", line.interval_s)?,
                        IntervalKind::Next => write!(
                            out,
                            "; {} x {} s from {} s",
                            line.interval_count, line.interval_s, line.start_offset_s
                        )?,
                    }
                    if line.period != Period::Standard {
                        write!(out, " {}", line.period.as_str())?;
                    }
                    write!(out, " @ {}/min = {}", line.price_per_minute, line.amount().normalize())?;
                }
                if !self.connection_fee.is_zero() {
                    write!(out, "; fee {}", self.connection_fee)?;
                }
            }
        }
        if !self.surcharge_pct.is_zero() {
            write!(out, "; surcharge {}%", self.surcharge_pct)?;
        }
        write!(
            out,
            "; exact {} posted {} ({} dp {})",
            self.amount_exact.normalize(),
            self.amount,
            self.posting.scale_dp,
            self.posting.rounding
        )
    }
}

/// A posted charge and its explanation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Charge {
    /// Posted: rounded once at the tariff's scale and strategy.
    pub amount: Decimal,
    pub billed_s: u32,
    pub explanation: Explanation,
}

/// The rate for a destination, by longest prefix.
pub fn lookup<'t>(tariff: &'t CompiledTariff, destination: &str) -> Result<&'t Rate, RatingError> {
    if crate::tariff::normalize_destination(destination).is_none() {
        return Err(RatingError::InvalidDestination {
            destination: destination.to_string(),
        });
    }
    tariff.lookup(destination).ok_or_else(|| RatingError::NoRate {
        destination: destination.to_string(),
    })
}

/// Rates a leg against the tariff version in force, in the account's billing time zone.
pub fn rate_leg(tariff: &CompiledTariff, leg: &Leg<'_>, billing_tz: Tz) -> Result<Charge, RatingError> {
    let rate = lookup(tariff, leg.destination)?;
    price(
        &PricingContext::new(&tariff.version, rate, billing_tz),
        leg.answered_at,
        leg.duration_s,
    )
}

/// Billed seconds for a duration under a rate (no prices involved).
pub fn billed_seconds(rate: &Rate, duration_s: u32) -> u32 {
    match billing_shape(rate, duration_s) {
        (BilledAs::Intervals, next_count) => rate
            .first_interval_s
            .saturating_add(next_count.saturating_mul(rate.next_interval_s)),
        _ => 0,
    }
}

/// Whether and how a duration is billed, and how many next intervals follow the first.
fn billing_shape(rate: &Rate, duration_s: u32) -> (BilledAs, u32) {
    if duration_s <= rate.grace_period_s {
        return (BilledAs::Grace, 0);
    }
    let remaining_s = duration_s.saturating_sub(rate.free_seconds);
    if remaining_s == 0 {
        return (BilledAs::FreeSeconds, 0);
    }
    let beyond_first_s = remaining_s.saturating_sub(rate.first_interval_s);
    // next_interval_s >= 1 for every validated rate; max(1) keeps a bad one from dividing by 0.
    let next_count = beyond_first_s.div_ceil(rate.next_interval_s.max(1));
    (BilledAs::Intervals, next_count)
}

/// Prices a call of `duration_s` answered at `answered_at` under one rate.
pub fn price(ctx: &PricingContext<'_>, answered_at: DateTime<Utc>, duration_s: u32) -> Result<Charge, RatingError> {
    if duration_s > MAX_CALL_DURATION_S {
        return Err(RatingError::DurationTooLong { duration_s });
    }
    let rate = ctx.rate;
    let (billed_as, next_count) = billing_shape(rate, duration_s);
    let mut lines = Vec::new();
    let mut billed_s = 0;
    let connection_fee = match billed_as {
        BilledAs::Grace => Decimal::ZERO,
        BilledAs::FreeSeconds => rate.connection_fee,
        BilledAs::Intervals => {
            billed_s = rate
                .first_interval_s
                .saturating_add(next_count.saturating_mul(rate.next_interval_s));
            let billed_from = answered_at + TimeDelta::seconds(i64::from(rate.free_seconds));
            match (ctx.crossing, ctx.effective_window()) {
                (Crossing::Split, Some(window)) => split_lines(ctx, window, billed_from, next_count, &mut lines),
                (_, window) => {
                    let period = match window {
                        Some(window) => window.period_at(ctx.billing_tz, answered_at),
                        None => Period::Standard,
                    };
                    whole_call_lines(ctx, period, next_count, &mut lines)
                }
            }
            rate.connection_fee
        }
    };

    let mut numerator = connection_fee
        .checked_mul(SECONDS_PER_MINUTE)
        .ok_or(RatingError::Overflow)?;
    for line in &lines {
        let line_numerator = line.price_seconds().ok_or(RatingError::Overflow)?;
        numerator = numerator.checked_add(line_numerator).ok_or(RatingError::Overflow)?;
    }
    let surcharge_pct = if billed_as == BilledAs::Grace {
        Decimal::ZERO
    } else {
        rate.post_call_surcharge_pct
    };
    let amount_exact = if surcharge_pct.is_zero() {
        numerator.checked_div(SECONDS_PER_MINUTE)
    } else {
        ONE_HUNDRED
            .checked_add(surcharge_pct)
            .and_then(|factor| numerator.checked_mul(factor))
            .and_then(|n| n.checked_div(PERCENT_MINUTES))
    }
    .ok_or(RatingError::Overflow)?;
    let amount = ctx.posting.post(amount_exact);

    Ok(Charge {
        amount,
        billed_s,
        explanation: Explanation {
            tariff_id: ctx.tariff_id,
            tariff_version: ctx.tariff_version,
            matched_prefix: rate.prefix,
            duration_s,
            billed_as,
            grace_period_s: rate.grace_period_s,
            free_seconds: if billed_as == BilledAs::Grace {
                0
            } else {
                rate.free_seconds.min(duration_s)
            },
            billed_s,
            crossing: ctx.crossing,
            lines,
            connection_fee,
            surcharge_pct,
            amount_exact,
            posting: ctx.posting,
            amount,
        },
    })
}

fn whole_call_lines(ctx: &PricingContext<'_>, period: Period, next_count: u32, lines: &mut Vec<ChargeLine>) {
    let rate = ctx.rate;
    let (first_price, next_price) = ctx.prices(period);
    lines.push(ChargeLine {
        kind: IntervalKind::First,
        period,
        start_offset_s: 0,
        interval_count: 1,
        interval_s: rate.first_interval_s,
        price_per_minute: first_price,
    });
    if next_count > 0 {
        lines.push(ChargeLine {
            kind: IntervalKind::Next,
            period,
            start_offset_s: rate.first_interval_s,
            interval_count: next_count,
            interval_s: rate.next_interval_s,
            price_per_minute: next_price,
        });
    }
}

/// Each interval at the period in which it starts; runs of equal price are one line.
fn split_lines(
    ctx: &PricingContext<'_>,
    window: OffPeakWindow,
    billed_from: DateTime<Utc>,
    next_count: u32,
    lines: &mut Vec<ChargeLine>,
) {
    let rate = ctx.rate;
    let tz = ctx.billing_tz;
    let first_period = window.period_at(tz, billed_from);
    lines.push(ChargeLine {
        kind: IntervalKind::First,
        period: first_period,
        start_offset_s: 0,
        interval_count: 1,
        interval_s: rate.first_interval_s,
        price_per_minute: ctx.prices(first_period).0,
    });
    let next_s = rate.next_interval_s.max(1);
    let mut done = 0u32;
    while done < next_count {
        let start_offset_s = rate.first_interval_s.saturating_add(done.saturating_mul(next_s));
        let run_start = billed_from + TimeDelta::seconds(i64::from(start_offset_s));
        let period = window.period_at(tz, run_start);
        let change = window.next_change(tz, run_start);
        // Intervals start at whole-second offsets; those starting before `change` belong to
        // this run. `change` is after `run_start`, so at least one interval does.
        let change_offset_ms = (change - billed_from).num_milliseconds();
        let change_offset_s = change_offset_ms.div_euclid(1000) + i64::from(change_offset_ms.rem_euclid(1000) != 0);
        let span_s = (change_offset_s - i64::from(start_offset_s)).max(1);
        let in_run = (span_s + i64::from(next_s) - 1) / i64::from(next_s);
        let remaining = next_count - done;
        let count = u32::try_from(in_run).unwrap_or(remaining).clamp(1, remaining);
        let price_per_minute = ctx.prices(period).1;
        match lines.last_mut() {
            Some(last)
                if last.kind == IntervalKind::Next
                    && last.period == period
                    && last.price_per_minute == price_per_minute =>
            {
                last.interval_count += count;
            }
            _ => lines.push(ChargeLine {
                kind: IntervalKind::Next,
                period,
                start_offset_s,
                interval_count: count,
                interval_s: next_s,
                price_per_minute,
            }),
        }
        done += count;
    }
}

/// How long a call may last on the funds available, as the reference asks authorization to say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaxDuration {
    /// The SIP node ends the call at this moment: the largest duration on an interval boundary
    /// (free seconds + first interval + k next intervals) whose charge the funds cover.
    pub actual_s: u32,
    /// What a prompt tells the caller: whole minutes, rounded down, so it never promises more
    /// than `actual_s` ("you have 98 minutes").
    pub announced_min: u32,
    /// The posted charge of a call lasting `actual_s`: what an authorization reserves. Every
    /// shorter call costs no more (charges never decrease with duration).
    pub charge_at_actual: Decimal,
    /// True when the limit (the caller's cap or [`MAX_CALL_DURATION_S`]) ended the search
    /// rather than the funds.
    pub limited: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AuthorizationError {
    #[error("available funds {available} do not cover the first interval ({first_charge})")]
    InsufficientFunds { available: Decimal, first_charge: Decimal },
    #[error(transparent)]
    Rating(#[from] RatingError),
}

/// The longest call, answered at `answered_at`, whose charge fits in `available`, up to
/// `limit_s` (rounded down to an interval boundary, but never below the first interval).
pub fn max_duration(
    ctx: &PricingContext<'_>,
    answered_at: DateTime<Utc>,
    available: Decimal,
    limit_s: u32,
) -> Result<MaxDuration, AuthorizationError> {
    let rate = ctx.rate;
    let first_end_s = rate.free_seconds.saturating_add(rate.first_interval_s);
    let next_s = rate.next_interval_s.max(1);
    let limit_s = limit_s.min(MAX_CALL_DURATION_S);
    let max_k = limit_s.saturating_sub(first_end_s) / next_s;
    let duration_at = |k: u32| first_end_s + k * next_s;
    let charge_at = |k: u32| price(ctx, answered_at, duration_at(k)).map(|c| c.amount);

    let first_charge = charge_at(0)?;
    if first_charge > available {
        return Err(AuthorizationError::InsufficientFunds {
            available,
            first_charge,
        });
    }
    let (k, limited) = if charge_at(max_k)? <= available {
        (max_k, true)
    } else {
        // Invariant: charge_at(lo) <= available < charge_at(hi); charges grow with k.
        let (mut lo, mut hi) = (0u32, max_k);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if charge_at(mid)? <= available {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        (lo, false)
    };
    let actual_s = duration_at(k);
    Ok(MaxDuration {
        actual_s,
        announced_min: actual_s / 60,
        charge_at_actual: charge_at(k)?,
        limited,
    })
}
