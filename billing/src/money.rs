//! The one place where money is rounded: posting an exact amount at a declared scale and strategy.
//!
//! Everything upstream of [`post`] computes in exact `Decimal`. Rounding happens once, when a
//! charge is posted (at the tariff's scale, 5 places by default) or when an invoice total is
//! stated in the currency's minor unit (2 places for EUR and USD). Bare `round`/`round_dp`
//! use banker's rounding and are never called in this crate.

use std::fmt;
use std::str::FromStr;

use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};

/// The scale carrier billing posts charges at unless a tariff declares another.
pub const DEFAULT_POSTING_SCALE_DP: u32 = 5;

/// The largest scale a tariff may declare; `Decimal` holds at most 28 places.
pub const MAX_POSTING_SCALE_DP: u32 = 12;

/// The minor unit of the currencies Ledgerline invoices in (EUR, USD, GBP, ...).
pub const CURRENCY_MINOR_UNIT_DP: u32 = 2;

/// How a posted amount is rounded to its scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RoundingMode {
    /// Half-up as finance means it: a midpoint goes away from zero (0.000005 -> 0.00001).
    /// Amounts posted by rating are never negative, so this is plain half-up for them.
    #[default]
    HalfUp,
    /// Any remainder goes away from zero, i.e. the ceiling of the magnitude (0.0000001 -> 0.00001).
    AwayFromZero,
}

impl RoundingMode {
    /// The `rust_decimal` strategy this mode stands for.
    pub fn strategy(self) -> RoundingStrategy {
        match self {
            RoundingMode::HalfUp => RoundingStrategy::MidpointAwayFromZero,
            RoundingMode::AwayFromZero => RoundingStrategy::AwayFromZero,
        }
    }

    /// The stable name used in explanations and configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            RoundingMode::HalfUp => "half-up",
            RoundingMode::AwayFromZero => "away-from-zero",
        }
    }
}

impl fmt::Display for RoundingMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RoundingMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "half-up" => Ok(RoundingMode::HalfUp),
            "away-from-zero" => Ok(RoundingMode::AwayFromZero),
            other => Err(format!(
                "unknown rounding mode '{other}' (expected half-up or away-from-zero)"
            )),
        }
    }
}

/// A scale and a strategy: how a tariff posts its charges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Posting {
    pub scale_dp: u32,
    pub rounding: RoundingMode,
}

impl Default for Posting {
    fn default() -> Self {
        Posting {
            scale_dp: DEFAULT_POSTING_SCALE_DP,
            rounding: RoundingMode::HalfUp,
        }
    }
}

impl Posting {
    /// Posting in a currency's minor unit, half-up: how invoice totals are stated.
    pub fn currency_minor_unit() -> Posting {
        Posting {
            scale_dp: CURRENCY_MINOR_UNIT_DP,
            rounding: RoundingMode::HalfUp,
        }
    }

    /// Posts `exact` under this policy; see [`post`].
    pub fn post(self, exact: Decimal) -> Decimal {
        post(exact, self.scale_dp, self.rounding)
    }
}

/// Rounds an exact amount once, to `scale_dp` places with `rounding`, and states it with exactly
/// `scale_dp` places (0.012 at 5 places is written 0.01200), so every posted figure of a tariff
/// reads the same way. This is the only rounding function in the crate.
pub fn post(exact: Decimal, scale_dp: u32, rounding: RoundingMode) -> Decimal {
    let mut posted = exact.round_dp_with_strategy(scale_dp, rounding.strategy());
    // After rounding the scale is at most `scale_dp`, so `rescale` only appends zeros and
    // never rounds again. A value so large that the extra zeros do not fit keeps its scale.
    if posted.scale() < scale_dp {
        posted.rescale(scale_dp);
    }
    posted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        // Test literals are written by hand and are valid decimals.
        Decimal::from_str(s).expect("test literal is a decimal")
    }

    #[test]
    fn half_up_takes_midpoints_away_from_zero_not_to_even() {
        assert_eq!(post(d("0.000005"), 5, RoundingMode::HalfUp), d("0.00001"));
        assert_eq!(post(d("0.000015"), 5, RoundingMode::HalfUp), d("0.00002"));
        assert_eq!(post(d("0.0000149"), 5, RoundingMode::HalfUp), d("0.00001"));
        assert_eq!(post(d("0.125"), 2, RoundingMode::HalfUp), d("0.13"));
    }

    #[test]
    fn away_from_zero_is_the_ceiling_of_the_magnitude() {
        assert_eq!(post(d("0.0000001"), 5, RoundingMode::AwayFromZero), d("0.00001"));
        assert_eq!(post(d("0.12"), 5, RoundingMode::AwayFromZero), d("0.12"));
        assert_eq!(post(d("-0.121"), 2, RoundingMode::AwayFromZero), d("-0.13"));
    }

    #[test]
    fn posted_amounts_are_written_at_the_full_scale() {
        assert_eq!(post(d("0.012"), 5, RoundingMode::HalfUp).to_string(), "0.01200");
        assert_eq!(post(d("2"), 2, RoundingMode::HalfUp).to_string(), "2.00");
    }

    #[test]
    fn rounding_modes_round_trip_through_their_names() {
        for mode in [RoundingMode::HalfUp, RoundingMode::AwayFromZero] {
            assert_eq!(RoundingMode::from_str(mode.as_str()), Ok(mode));
        }
        assert!(RoundingMode::from_str("bankers").is_err());
    }
}
