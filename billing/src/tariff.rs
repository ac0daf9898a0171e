//! Tariffs as event-sourced aggregates: versioned rate decks, validated, with a longest-prefix index.
//!
//! A tariff (stream `tariff-{id}`) is created once in a currency and then publishes versions,
//! each with an `effective_from`, a set of rates, the off-peak window, the crossing behaviour and
//! the posting policy. Rating uses the version in force at the call's answer time, so a replay
//! rates every call the same way. Each version is compiled into a digit trie on `evolve`, so a
//! lookup costs one step per digit of the destination, whatever the size of the deck.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;
use uuid::Uuid;

use crate::money::{Posting, MAX_POSTING_SCALE_DP};
use crate::peak::OffPeakWindow;

/// The most digits a prefix may have (E.164 numbers have at most 15).
pub const MAX_PREFIX_DIGITS: usize = 18;

/// The most rates one tariff version may hold.
pub const MAX_RATES_PER_VERSION: usize = 1_000_000;

/// The largest price per minute or connection fee a rate may declare, in currency units.
/// With durations capped at a day this keeps every intermediate product far inside `Decimal`.
pub const MAX_PRICE: Decimal = Decimal::from_parts(1_000_000, 0, 0, false, 0);

/// The most decimal places a price may have.
pub const MAX_PRICE_SCALE_DP: u32 = 10;

/// The largest post-call surcharge, in percent.
pub const MAX_SURCHARGE_PCT: Decimal = Decimal::from_parts(1_000, 0, 0, false, 0);

/// The longest interval or free/grace period a rate may declare.
pub const MAX_INTERVAL_S: u32 = 86_400;

/// A destination prefix: 1 to 18 decimal digits, stored inline so that it is `Copy`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    digits: u64,
    len: u8,
}

impl Prefix {
    /// Parses a prefix, accepting a leading `+` as E.164 numbers are often written.
    pub fn parse(text: &str) -> Result<Prefix, String> {
        let digits = text.strip_prefix('+').unwrap_or(text);
        if digits.is_empty() {
            return Err("prefix is empty".to_string());
        }
        if digits.len() > MAX_PREFIX_DIGITS {
            return Err(format!("prefix '{text}' has more than {MAX_PREFIX_DIGITS} digits"));
        }
        let mut value: u64 = 0;
        for byte in digits.bytes() {
            if !byte.is_ascii_digit() {
                return Err(format!("prefix '{text}' must be digits only"));
            }
            // At most 18 digits: the value stays below 10^18 < u64::MAX.
            value = value * 10 + u64::from(byte - b'0');
        }
        Ok(Prefix {
            digits: value,
            // Bounded by MAX_PREFIX_DIGITS above.
            len: digits.len() as u8,
        })
    }

    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Never true: a prefix has at least one digit.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The digits, most significant first, as ASCII.
    pub fn to_ascii(self) -> Vec<u8> {
        let mut out = vec![b'0'; self.len()];
        let mut rest = self.digits;
        for slot in out.iter_mut().rev() {
            // A remainder of 10 is below 10, so it fits in u8.
            *slot = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        out
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // to_ascii writes only ASCII digits.
        let text = String::from_utf8(self.to_ascii()).expect("digits are ASCII");
        f.write_str(&text)
    }
}

impl fmt::Debug for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Prefix({self})")
    }
}

impl FromStr for Prefix {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Prefix::parse(s)
    }
}

impl Serialize for Prefix {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Prefix {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Prefix::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// The prices of the first and the next intervals in one period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeriodPrices {
    pub first_price_per_minute: Decimal,
    pub next_price_per_minute: Decimal,
}

/// One line of a deck: what a destination prefix costs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rate {
    pub prefix: Prefix,
    /// The first billed interval, which is also the minimum billed duration.
    pub first_interval_s: u32,
    pub next_interval_s: u32,
    /// Peak (or only) prices.
    pub first_price_per_minute: Decimal,
    pub next_price_per_minute: Decimal,
    pub connection_fee: Decimal,
    /// The first seconds of every call that are not charged.
    pub free_seconds: u32,
    /// A call this short or shorter is free altogether (no connection fee either).
    pub grace_period_s: u32,
    /// Percent added to the whole charge, connection fee included.
    pub post_call_surcharge_pct: Decimal,
    /// Off-peak prices; `None` means the rate costs the same at any hour.
    pub offpeak: Option<PeriodPrices>,
}

impl Rate {
    /// A rate with one price for every interval and nothing else: the common case.
    pub fn simple(prefix: Prefix, first_interval_s: u32, next_interval_s: u32, price_per_minute: Decimal) -> Rate {
        Rate {
            prefix,
            first_interval_s,
            next_interval_s,
            first_price_per_minute: price_per_minute,
            next_price_per_minute: price_per_minute,
            connection_fee: Decimal::ZERO,
            free_seconds: 0,
            grace_period_s: 0,
            post_call_surcharge_pct: Decimal::ZERO,
            offpeak: None,
        }
    }

    /// Checks the limits that keep rating exact and panic-free.
    pub fn validate(&self) -> Result<(), RateProblem> {
        for (field, value) in [
            ("first_interval_s", self.first_interval_s),
            ("next_interval_s", self.next_interval_s),
        ] {
            if value == 0 || value > MAX_INTERVAL_S {
                return Err(RateProblem::new(
                    field,
                    format!("must be between 1 and {MAX_INTERVAL_S}"),
                ));
            }
        }
        for (field, value) in [
            ("free_seconds", self.free_seconds),
            ("grace_period_s", self.grace_period_s),
        ] {
            if value > MAX_INTERVAL_S {
                return Err(RateProblem::new(field, format!("must be at most {MAX_INTERVAL_S}")));
            }
        }
        let mut prices = vec![
            ("price_per_min", self.first_price_per_minute),
            ("next_price_per_min", self.next_price_per_minute),
            ("connection_fee", self.connection_fee),
        ];
        if let Some(offpeak) = &self.offpeak {
            prices.push(("offpeak_price_per_min", offpeak.first_price_per_minute));
            prices.push(("offpeak_next_price_per_min", offpeak.next_price_per_minute));
        }
        for (field, value) in prices {
            check_amount(field, value, MAX_PRICE)?;
        }
        check_amount(
            "post_call_surcharge_pct",
            self.post_call_surcharge_pct,
            MAX_SURCHARGE_PCT,
        )
    }
}

/// What is wrong with a rate, and in which field (named as in a deck file's header).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{field} {message}")]
pub struct RateProblem {
    pub field: &'static str,
    pub message: String,
}

impl RateProblem {
    fn new(field: &'static str, message: String) -> RateProblem {
        RateProblem { field, message }
    }
}

fn check_amount(field: &'static str, value: Decimal, max: Decimal) -> Result<(), RateProblem> {
    if value.is_sign_negative() && !value.is_zero() {
        return Err(RateProblem::new(field, "must not be negative".to_string()));
    }
    if value > max {
        return Err(RateProblem::new(field, format!("must be at most {max}")));
    }
    if value.scale() > MAX_PRICE_SCALE_DP {
        return Err(RateProblem::new(
            field,
            format!("must have at most {MAX_PRICE_SCALE_DP} decimal places"),
        ));
    }
    Ok(())
}

/// What happens to a call that crosses a peak/off-peak boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Crossing {
    /// One price set for the whole call, chosen at the answer time (PortaBilling).
    #[default]
    WholeCall,
    /// Each billing interval at the price of the period in which it starts (CGRateS).
    Split,
}

impl Crossing {
    pub fn as_str(self) -> &'static str {
        match self {
            Crossing::WholeCall => "whole_call",
            Crossing::Split => "split",
        }
    }
}

impl FromStr for Crossing {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "whole_call" => Ok(Crossing::WholeCall),
            "split" => Ok(Crossing::Split),
            other => Err(format!("unknown crossing '{other}' (expected whole_call or split)")),
        }
    }
}

/// One published version of a tariff: everything rating needs, and nothing it must look up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TariffVersion {
    pub tariff_id: Uuid,
    /// 1 for the first published version, then +1.
    pub version: u32,
    pub effective_from: DateTime<Utc>,
    /// ISO 4217 code, e.g. "EUR".
    pub currency: String,
    pub rates: Vec<Rate>,
    /// The daily off-peak window in the account's billing time zone; `None`: always peak.
    pub offpeak_window: Option<OffPeakWindow>,
    pub crossing: Crossing,
    pub posting: Posting,
}

impl TariffVersion {
    /// Checks every rate, the posting policy and that no prefix appears twice.
    pub fn validate(&self) -> Result<(), TariffRejection> {
        if self.rates.len() > MAX_RATES_PER_VERSION {
            return Err(TariffRejection::TooManyRates {
                count: self.rates.len(),
            });
        }
        if self.posting.scale_dp > MAX_POSTING_SCALE_DP {
            return Err(TariffRejection::InvalidPosting {
                scale_dp: self.posting.scale_dp,
            });
        }
        validate_currency(&self.currency)?;
        let mut index = PrefixIndex::default();
        for (position, rate) in self.rates.iter().enumerate() {
            rate.validate().map_err(|problem| TariffRejection::InvalidRate {
                prefix: rate.prefix,
                reason: problem.to_string(),
            })?;
            // Positions are bounded by MAX_RATES_PER_VERSION, far below u32::MAX.
            if index.insert(rate.prefix, position as u32).is_some() {
                return Err(TariffRejection::DuplicatePrefix { prefix: rate.prefix });
            }
        }
        Ok(())
    }
}

fn validate_currency(currency: &str) -> Result<(), TariffRejection> {
    if currency.len() == 3 && currency.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err(TariffRejection::InvalidCurrency {
            currency: currency.to_string(),
        })
    }
}

/// A longest-prefix index over decimal digits: a trie stored in one vector.
#[derive(Debug, Clone)]
pub struct PrefixIndex {
    nodes: Vec<TrieNode>,
}

#[derive(Debug, Clone, Copy)]
struct TrieNode {
    /// Index of the child node per digit; 0 means none (the root is nobody's child).
    children: [u32; 10],
    /// Index of the rate whose prefix ends here, or `NO_RATE`.
    rate: u32,
}

const NO_RATE: u32 = u32::MAX;

const EMPTY_NODE: TrieNode = TrieNode {
    children: [0; 10],
    rate: NO_RATE,
};

impl Default for PrefixIndex {
    fn default() -> Self {
        PrefixIndex {
            nodes: vec![EMPTY_NODE],
        }
    }
}

impl PrefixIndex {
    /// Builds the index of a deck; a later duplicate replaces an earlier one (versions are
    /// validated before they are published, so a published version has none).
    pub fn build(rates: &[Rate]) -> PrefixIndex {
        let mut index = PrefixIndex::default();
        for (position, rate) in rates.iter().enumerate() {
            // Bounded by MAX_RATES_PER_VERSION on publish.
            index.insert(rate.prefix, position as u32);
        }
        index
    }

    /// Adds a prefix; returns the rate it replaced, if any.
    pub fn insert(&mut self, prefix: Prefix, rate: u32) -> Option<u32> {
        let mut node = 0usize;
        for digit in prefix.to_ascii() {
            let slot = usize::from(digit - b'0');
            let child = self.nodes[node].children[slot];
            node = if child == 0 {
                let next = self.nodes.len();
                self.nodes.push(EMPTY_NODE);
                // A deck of at most 10^6 prefixes of at most 18 digits has < 2^32 nodes.
                self.nodes[node].children[slot] = next as u32;
                next
            } else {
                child as usize
            };
        }
        let previous = std::mem::replace(&mut self.nodes[node].rate, rate);
        (previous != NO_RATE).then_some(previous)
    }

    /// The rate of the longest prefix of `digits` (ASCII digits only; callers normalize).
    #[inline]
    pub fn longest_match(&self, digits: &[u8]) -> Option<u32> {
        let mut best = NO_RATE;
        let mut node = &self.nodes[0];
        for &byte in digits {
            let slot = byte.wrapping_sub(b'0');
            if slot > 9 {
                break;
            }
            let child = node.children[usize::from(slot)];
            if child == 0 {
                break;
            }
            // Children are only ever indices of pushed nodes.
            node = &self.nodes[child as usize];
            if node.rate != NO_RATE {
                best = node.rate;
            }
        }
        (best != NO_RATE).then_some(best)
    }

    /// How many trie nodes the index holds (for sizing reports).
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }
}

/// The digits of a destination in E.164 form without the `+`, or `None` if it has anything
/// else in it.
#[inline]
pub fn normalize_destination(destination: &str) -> Option<&[u8]> {
    let digits = destination.strip_prefix('+').unwrap_or(destination).as_bytes();
    if digits.is_empty() || digits.len() > 32 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits)
}

/// A tariff version with its prefix index, ready to rate.
#[derive(Debug, Clone)]
pub struct CompiledTariff {
    pub version: TariffVersion,
    index: PrefixIndex,
}

impl CompiledTariff {
    /// Compiles a version; call [`TariffVersion::validate`] first for input from outside.
    pub fn new(version: TariffVersion) -> CompiledTariff {
        let index = PrefixIndex::build(&version.rates);
        CompiledTariff { version, index }
    }

    /// The rate for a destination by longest prefix.
    #[inline]
    pub fn lookup(&self, destination: &str) -> Option<&Rate> {
        let digits = normalize_destination(destination)?;
        let position = self.index.longest_match(digits)?;
        self.version.rates.get(position as usize)
    }

    pub fn index(&self) -> &PrefixIndex {
        &self.index
    }
}

// ----------------------------------------------------------------------------------------------
// The tariff decider.

/// What may be asked of a tariff. Everything a decision needs is in the command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TariffCommand {
    Create {
        tariff_id: Uuid,
        tenant_id: Uuid,
        name: String,
        currency: String,
    },
    PublishVersion {
        effective_from: DateTime<Utc>,
        /// The caller's clock: a version may not take effect in the past, because calls
        /// already rated under the previous version would then rate differently on replay.
        now: DateTime<Utc>,
        rates: Vec<Rate>,
        offpeak_window: Option<OffPeakWindow>,
        crossing: Crossing,
        posting: Posting,
    },
    /// Correct a published version in place: the same number, `effective_from` and currency,
    /// with the deck it should have had. Calls answered while it was in force are re-rated
    /// (by the `billing` projection) and their invoices adjusted (see `invoice::CorrectCharge`).
    CorrectVersion {
        version: u32,
        rates: Vec<Rate>,
        offpeak_window: Option<OffPeakWindow>,
        crossing: Crossing,
        posting: Posting,
        /// Why, as finance will read it on the adjustment lines.
        reason: String,
    },
}

/// The longest reason a correction may give.
pub const MAX_REASON_CHARS: usize = 500;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TariffCreated {
    pub tariff_id: Uuid,
    pub tenant_id: Uuid,
    pub name: String,
    pub currency: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TariffVersionPublished {
    pub version: TariffVersion,
}

/// A published version corrected in place. A correction is a new fact: the version as first
/// published stays in the log, and "as billed" figures computed with it stay as they were.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TariffVersionCorrected {
    /// The version as corrected: its number, `effective_from` and currency are the published ones.
    pub version: TariffVersion,
    /// 1 for the first correction of this version, then +1.
    pub revision: u32,
    pub reason: String,
}

/// The facts of a tariff stream (`tariff-{id}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event_type", content = "payload")]
pub enum TariffEvent {
    #[serde(rename = "TariffCreated")]
    Created(TariffCreated),
    #[serde(rename = "TariffVersionPublished")]
    VersionPublished(TariffVersionPublished),
    #[serde(rename = "TariffVersionCorrected")]
    VersionCorrected(TariffVersionCorrected),
}

impl TariffEvent {
    pub fn event_type(&self) -> &'static str {
        match self {
            TariffEvent::Created(_) => "TariffCreated",
            TariffEvent::VersionPublished(_) => "TariffVersionPublished",
            TariffEvent::VersionCorrected(_) => "TariffVersionCorrected",
        }
    }
}

crate::events::impl_event_payload!(TariffEvent);

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TariffRejection {
    #[error("the tariff already exists")]
    AlreadyCreated,
    #[error("the tariff does not exist")]
    NotCreated,
    #[error("currency '{currency}' is not an ISO 4217 code")]
    InvalidCurrency { currency: String },
    #[error("a version may not take effect in the past ({effective_from} is before {now})")]
    EffectiveInThePast {
        effective_from: DateTime<Utc>,
        now: DateTime<Utc>,
    },
    #[error("a version must take effect after version {previous} ({previous_effective_from})")]
    NotAfterPreviousVersion {
        previous: u32,
        previous_effective_from: DateTime<Utc>,
    },
    #[error("rate {prefix}: {reason}")]
    InvalidRate { prefix: Prefix, reason: String },
    #[error("prefix {prefix} appears twice")]
    DuplicatePrefix { prefix: Prefix },
    #[error("{count} rates exceed the limit of {MAX_RATES_PER_VERSION}")]
    TooManyRates { count: usize },
    #[error("posting scale {scale_dp} exceeds {MAX_POSTING_SCALE_DP} places")]
    InvalidPosting { scale_dp: u32 },
    #[error("version {version} has not been published")]
    UnknownVersion { version: u32 },
    #[error("the correction changes nothing in version {version}")]
    NothingCorrected { version: u32 },
    #[error("a correction needs a reason of 1 to {MAX_REASON_CHARS} characters")]
    InvalidReason,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TariffHeader {
    pub tariff_id: Uuid,
    pub tenant_id: Uuid,
    pub name: String,
    pub currency: String,
}

/// A tariff as its events leave it: the header and every version, compiled, oldest first,
/// each as last corrected.
#[derive(Debug, Clone, Default)]
pub struct TariffState {
    pub header: Option<TariffHeader>,
    pub versions: Vec<Arc<CompiledTariff>>,
    /// Per version (same index): how many corrections it has had; 0 as published.
    pub revisions: Vec<u32>,
}

impl TariffState {
    /// A published version by number, as last corrected, with its revision.
    pub fn version(&self, number: u32) -> Option<(&Arc<CompiledTariff>, u32)> {
        let index = usize::try_from(number.checked_sub(1)?).ok()?;
        Some((
            self.versions.get(index)?,
            self.revisions.get(index).copied().unwrap_or(0),
        ))
    }

    /// The version in force at `at`: the latest whose `effective_from` is not after it.
    pub fn in_force(&self, at: DateTime<Utc>) -> Option<&Arc<CompiledTariff>> {
        // Versions are appended in increasing `effective_from` order (decide enforces it).
        let count = self.versions.partition_point(|v| v.version.effective_from <= at);
        count.checked_sub(1).map(|i| &self.versions[i])
    }
}

/// The stream a tariff's events live in.
pub fn stream_id(tariff_id: Uuid) -> String {
    format!("tariff-{tariff_id}")
}

pub fn decide(command: &TariffCommand, state: &TariffState) -> Result<Vec<TariffEvent>, TariffRejection> {
    match command {
        TariffCommand::Create {
            tariff_id,
            tenant_id,
            name,
            currency,
        } => {
            if state.header.is_some() {
                return Err(TariffRejection::AlreadyCreated);
            }
            validate_currency(currency)?;
            Ok(vec![TariffEvent::Created(TariffCreated {
                tariff_id: *tariff_id,
                tenant_id: *tenant_id,
                name: name.clone(),
                currency: currency.clone(),
            })])
        }
        TariffCommand::PublishVersion {
            effective_from,
            now,
            rates,
            offpeak_window,
            crossing,
            posting,
        } => {
            let Some(header) = &state.header else {
                return Err(TariffRejection::NotCreated);
            };
            if effective_from < now {
                return Err(TariffRejection::EffectiveInThePast {
                    effective_from: *effective_from,
                    now: *now,
                });
            }
            if let Some(previous) = state.versions.last() {
                if *effective_from <= previous.version.effective_from {
                    return Err(TariffRejection::NotAfterPreviousVersion {
                        previous: previous.version.version,
                        previous_effective_from: previous.version.effective_from,
                    });
                }
            }
            // At most one version per publish command, so the count fits u32 in practice;
            // saturate rather than wrap if it ever did not.
            let number = u32::try_from(state.versions.len())
                .unwrap_or(u32::MAX)
                .saturating_add(1);
            let version = TariffVersion {
                tariff_id: header.tariff_id,
                version: number,
                effective_from: *effective_from,
                currency: header.currency.clone(),
                rates: rates.clone(),
                offpeak_window: *offpeak_window,
                crossing: *crossing,
                posting: *posting,
            };
            version.validate()?;
            Ok(vec![TariffEvent::VersionPublished(TariffVersionPublished { version })])
        }
        TariffCommand::CorrectVersion {
            version,
            rates,
            offpeak_window,
            crossing,
            posting,
            reason,
        } => {
            if state.header.is_none() {
                return Err(TariffRejection::NotCreated);
            }
            let Some((current, revision)) = state.version(*version) else {
                return Err(TariffRejection::UnknownVersion { version: *version });
            };
            let reason = reason.trim();
            if reason.is_empty() || reason.chars().count() > MAX_REASON_CHARS {
                return Err(TariffRejection::InvalidReason);
            }
            let corrected = TariffVersion {
                rates: rates.clone(),
                offpeak_window: *offpeak_window,
                crossing: *crossing,
                posting: *posting,
                ..current.version.clone()
            };
            if corrected == current.version {
                return Err(TariffRejection::NothingCorrected { version: *version });
            }
            corrected.validate()?;
            Ok(vec![TariffEvent::VersionCorrected(TariffVersionCorrected {
                version: corrected,
                revision: revision.saturating_add(1),
                reason: reason.to_string(),
            })])
        }
    }
}

pub fn evolve(mut state: TariffState, event: &TariffEvent) -> TariffState {
    match event {
        TariffEvent::Created(created) => {
            state.header = Some(TariffHeader {
                tariff_id: created.tariff_id,
                tenant_id: created.tenant_id,
                name: created.name.clone(),
                currency: created.currency.clone(),
            });
        }
        TariffEvent::VersionPublished(published) => {
            state
                .versions
                .push(Arc::new(CompiledTariff::new(published.version.clone())));
            state.revisions.push(0);
        }
        TariffEvent::VersionCorrected(corrected) => {
            // decide only corrects published versions; an unknown one changes nothing.
            let index = corrected.version.version.checked_sub(1).map(|i| i as usize);
            if let Some(index) = index.filter(|i| *i < state.versions.len()) {
                state.versions[index] = Arc::new(CompiledTariff::new(corrected.version.clone()));
                if let Some(slot) = state.revisions.get_mut(index) {
                    *slot = corrected.revision;
                }
            }
        }
    }
    state
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Prefix {
        Prefix::parse(s).expect("test prefix is valid")
    }

    #[test]
    fn prefixes_keep_leading_zeros_and_reject_non_digits() {
        assert_eq!(p("0049").to_string(), "0049");
        assert_eq!(p("+4930").to_string(), "4930");
        assert!(Prefix::parse("49a").is_err());
        assert!(Prefix::parse("").is_err());
        assert!(Prefix::parse("1234567890123456789").is_err());
    }

    #[test]
    fn longest_prefix_wins() {
        let rates: Vec<Rate> = ["4", "49", "4930", "1"]
            .iter()
            .map(|s| Rate::simple(p(s), 60, 60, Decimal::ONE))
            .collect();
        let index = PrefixIndex::build(&rates);
        assert_eq!(index.longest_match(b"493012345"), Some(2));
        assert_eq!(index.longest_match(b"4940"), Some(1));
        assert_eq!(index.longest_match(b"45"), Some(0));
        assert_eq!(index.longest_match(b"493"), Some(1));
        assert_eq!(index.longest_match(b"7"), None);
        assert_eq!(index.longest_match(b""), None);
    }

    #[test]
    fn destinations_are_normalized() {
        assert_eq!(normalize_destination("+4930"), Some(&b"4930"[..]));
        assert_eq!(normalize_destination("4930 1"), None);
        assert_eq!(normalize_destination("+"), None);
    }

    fn created() -> TariffEvent {
        TariffEvent::Created(TariffCreated {
            tariff_id: Uuid::from_u128(7),
            tenant_id: Uuid::from_u128(1),
            name: "Standard".to_string(),
            currency: "EUR".to_string(),
        })
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("test literal is RFC 3339")
            .with_timezone(&Utc)
    }

    fn price(text: &str) -> Decimal {
        Decimal::from_str(text).expect("test literal is a decimal")
    }

    fn published(number: u32, effective_from: &str, price_per_minute: &str) -> TariffEvent {
        TariffEvent::VersionPublished(TariffVersionPublished {
            version: TariffVersion {
                tariff_id: Uuid::from_u128(7),
                version: number,
                effective_from: at(effective_from),
                currency: "EUR".to_string(),
                rates: vec![Rate::simple(p("49"), 60, 60, price(price_per_minute))],
                offpeak_window: None,
                crossing: Crossing::WholeCall,
                posting: Posting::default(),
            },
        })
    }

    fn correct(number: u32, price_per_minute: &str, reason: &str) -> TariffCommand {
        TariffCommand::CorrectVersion {
            version: number,
            rates: vec![Rate::simple(p("49"), 60, 60, price(price_per_minute))],
            offpeak_window: None,
            crossing: Crossing::WholeCall,
            posting: Posting::default(),
            reason: reason.to_string(),
        }
    }

    fn given(events: &[TariffEvent]) -> TariffState {
        events.iter().fold(TariffState::default(), evolve)
    }

    /// A given/when/then row: name, history, command, expected decision.
    type Case = (
        &'static str,
        Vec<TariffEvent>,
        TariffCommand,
        Result<Vec<TariffEvent>, TariffRejection>,
    );

    #[test]
    fn corrections_given_when_then() {
        let history = vec![
            created(),
            published(1, "2024-01-01T00:00:00Z", "0.030"),
            published(2, "2024-06-01T00:00:00Z", "0.040"),
        ];
        let TariffEvent::VersionPublished(first) = &history[1] else {
            unreachable!("the second event is a publication");
        };
        let corrected_first = TariffVersion {
            rates: vec![Rate::simple(p("49"), 60, 60, price("0.020"))],
            ..first.version.clone()
        };
        let cases: Vec<Case> = vec![
            (
                "a correction keeps the number and the validity, and counts revisions",
                history.clone(),
                correct(1, "0.020", " wrong price for Germany "),
                Ok(vec![TariffEvent::VersionCorrected(TariffVersionCorrected {
                    version: corrected_first.clone(),
                    revision: 1,
                    reason: "wrong price for Germany".to_string(),
                })]),
            ),
            (
                "a second correction is revision 2",
                {
                    let mut h = history.clone();
                    h.push(TariffEvent::VersionCorrected(TariffVersionCorrected {
                        version: corrected_first.clone(),
                        revision: 1,
                        reason: "first fix".to_string(),
                    }));
                    h
                },
                correct(1, "0.025", "second fix"),
                Ok(vec![TariffEvent::VersionCorrected(TariffVersionCorrected {
                    version: TariffVersion {
                        rates: vec![Rate::simple(p("49"), 60, 60, price("0.025"))],
                        ..first.version.clone()
                    },
                    revision: 2,
                    reason: "second fix".to_string(),
                })]),
            ),
            (
                "an unpublished version cannot be corrected",
                history.clone(),
                correct(3, "0.020", "typo"),
                Err(TariffRejection::UnknownVersion { version: 3 }),
            ),
            (
                "version 0 does not exist",
                history.clone(),
                correct(0, "0.020", "typo"),
                Err(TariffRejection::UnknownVersion { version: 0 }),
            ),
            (
                "a correction that changes nothing is refused",
                history.clone(),
                correct(1, "0.030", "no-op"),
                Err(TariffRejection::NothingCorrected { version: 1 }),
            ),
            (
                "a correction needs a reason",
                history.clone(),
                correct(1, "0.020", "   "),
                Err(TariffRejection::InvalidReason),
            ),
            (
                "corrected rates are validated like published ones",
                history.clone(),
                correct(1, "-1", "negative"),
                Err(TariffRejection::InvalidRate {
                    prefix: p("49"),
                    reason: "price_per_min must not be negative".to_string(),
                }),
            ),
            (
                "nothing to correct before the tariff exists",
                vec![],
                correct(1, "0.020", "typo"),
                Err(TariffRejection::NotCreated),
            ),
        ];
        for (name, history, command, expected) in cases {
            assert_eq!(decide(&command, &given(&history)), expected, "{name}");
        }
    }

    #[test]
    fn a_correction_replaces_the_version_in_force_without_moving_it() {
        let mut state = given(&[
            created(),
            published(1, "2024-01-01T00:00:00Z", "0.030"),
            published(2, "2024-06-01T00:00:00Z", "0.040"),
        ]);
        let events = decide(&correct(1, "0.020", "fix"), &state).expect("a valid correction");
        state = events.iter().fold(state, evolve);
        let march = state
            .in_force(at("2024-03-01T00:00:00Z"))
            .expect("version 1 is in force");
        assert_eq!(march.version.version, 1);
        assert_eq!(march.version.rates[0].first_price_per_minute, price("0.020"));
        assert_eq!(state.version(1).map(|(_, r)| r), Some(1));
        let july = state
            .in_force(at("2024-07-01T00:00:00Z"))
            .expect("version 2 is in force");
        assert_eq!((july.version.version, state.version(2).map(|(_, r)| r)), (2, Some(0)));
    }
}
