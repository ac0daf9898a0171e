//! Billing: tariffs, rating, accounts and invoices, pure and exact (see ARCHITECTURE.md).
//!
//! This crate does no IO, reads no clock and uses no floats. Money is `rust_decimal::Decimal`,
//! computed exactly and rounded once, when posted, by [`money::post`]. Every aggregate is a
//! decider (`decide`, `evolve`, a `Default` initial state); whatever a decision needs (the
//! tariff in force, `now`) arrives in the command.
//!
//! - [`tariff`]: tariff streams, versions, rates and the longest-prefix index.
//! - [`rating`]: a leg and a tariff version in, a [`rating::Charge`] with its explanation out.
//! - [`peak`]: peak/off-peak windows in the billing time zone, across midnight and DST.
//! - [`account`]: prepaid and postpaid accounts, reservations and maximum call duration.
//! - [`conference`]: participant legs billed to the room owner.
//! - [`invoice`]: billing periods, grouped lines, taxes, corrections after closing.
//! - [`csv`]: the finance command line's deck and calls files, parsed and rendered.
//! - [`bench_support`]: deterministic decks and legs for `ledgerline bench rating`.

pub mod account;
pub mod aggregates;
pub mod bench_support;
pub mod conference;
pub mod csv;
pub mod events;
pub mod invoice;
pub mod money;
pub mod peak;
pub mod rating;
pub mod tariff;

pub use chrono_tz::Tz;
pub use money::{post, Posting, RoundingMode};
pub use peak::{parse_timezone, OffPeakWindow, Period};
pub use rating::{max_duration, price, rate_leg, Charge, Explanation, Leg, MaxDuration, RatingError};
pub use tariff::{CompiledTariff, Crossing, Prefix, Rate, TariffVersion};
