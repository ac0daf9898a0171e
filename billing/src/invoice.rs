//! Invoices: monthly billing periods in the account's time zone, grouped lines, taxes, corrections.
//!
//! An invoice book (stream `invoice-{account_id}`) is a decider. Each posted charge lands in the
//! period that contains it, a calendar month in the billing time zone. Closing a period freezes
//! it: its totals ("as billed") are recorded in `PeriodClosed` and nothing is ever added to it
//! again. A charge that arrives late for a closed period, or a correction of any charge, becomes
//! an adjustment line in the first open period from the charge's own onwards; "as corrected"
//! figures for a period add back the adjustments made for it wherever they landed.
//!
//! Amounts on lines are exact sums of posted charges; totals are stated in the currency's minor
//! unit through [`crate::money::post`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::{self, Write as _};

use chrono::{DateTime, Datelike, NaiveDate, TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use uuid::Uuid;

use crate::money::Posting;

/// The most entries (charges and adjustments) one period may hold.
pub const MAX_ENTRIES_PER_PERIOD: usize = 10_000_000;

/// The largest tax rate, in percent.
pub const MAX_TAX_RATE_PCT: Decimal = Decimal::from_parts(100, 0, 0, false, 0);

/// A calendar month in the billing time zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BillingPeriod {
    pub year: i32,
    /// 1 to 12.
    pub month: u32,
}

impl BillingPeriod {
    /// The period containing `at`, read in `tz`.
    pub fn containing(at: DateTime<Utc>, tz: Tz) -> BillingPeriod {
        let local = at.with_timezone(&tz);
        BillingPeriod {
            year: local.year(),
            month: local.month(),
        }
    }

    pub fn next(self) -> BillingPeriod {
        if self.month >= 12 {
            BillingPeriod {
                year: self.year.saturating_add(1),
                month: 1,
            }
        } else {
            BillingPeriod {
                year: self.year,
                month: self.month + 1,
            }
        }
    }

    /// The instant the period starts: local midnight of the 1st, or the first local time after
    /// it when a DST change skips midnight.
    pub fn starts_at(self, tz: Tz) -> Option<DateTime<Utc>> {
        let midnight = NaiveDate::from_ymd_opt(self.year, self.month, 1)?.and_hms_opt(0, 0, 0)?;
        for shift_min in 0..=180 {
            let local = midnight + TimeDelta::minutes(shift_min);
            if let Some(start) = tz.from_local_datetime(&local).earliest() {
                return Some(start.with_timezone(&Utc));
            }
        }
        None
    }

    /// The instant the next period starts.
    pub fn ends_at(self, tz: Tz) -> Option<DateTime<Utc>> {
        self.next().starts_at(tz)
    }
}

impl fmt::Display for BillingPeriod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

/// What a line bills for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Service {
    Calls,
    Conferences,
}

impl Service {
    pub fn as_str(self) -> &'static str {
        match self {
            Service::Calls => "calls",
            Service::Conferences => "conferences",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaxMode {
    /// Prices include the tax; the invoice states how much of the total it is.
    Inclusive,
    /// The tax is added on top of the net amount.
    Exclusive,
}

/// The tenant's tax rate and how prices relate to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TaxPolicy {
    pub rate_pct: Decimal,
    pub mode: TaxMode,
}

/// Net, tax and total of an invoice, in the currency's minor unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceTotals {
    pub net: Decimal,
    pub tax: Decimal,
    pub total: Decimal,
}

impl TaxPolicy {
    /// Totals of an exact gross of posted charges. Net and tax are stated in the minor unit
    /// and always add up to the total.
    pub fn totals(&self, charges_sum: Decimal) -> InvoiceTotals {
        let minor = Posting::currency_minor_unit();
        match self.mode {
            TaxMode::Exclusive => {
                let net = minor.post(charges_sum);
                let tax = minor.post(net * self.rate_pct / Decimal::ONE_HUNDRED);
                InvoiceTotals {
                    net,
                    tax,
                    total: net + tax,
                }
            }
            TaxMode::Inclusive => {
                let total = minor.post(charges_sum);
                let tax = minor.post(total * self.rate_pct / (Decimal::ONE_HUNDRED + self.rate_pct));
                InvoiceTotals {
                    net: total - tax,
                    tax,
                    total,
                }
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InvoiceCommand {
    Open {
        account_id: Uuid,
        tenant_id: Uuid,
        currency: String,
        billing_tz: Tz,
    },
    /// Put a posted charge on the invoice of its period.
    RecordCharge {
        charge_id: Uuid,
        occurred_at: DateTime<Utc>,
        service: Service,
        /// What the line groups by: the matched prefix or the destination's name.
        destination: String,
        amount: Decimal,
    },
    /// Replace a recorded charge's amount; the difference becomes an adjustment.
    CorrectCharge {
        correction_id: Uuid,
        charge_id: Uuid,
        corrected_amount: Decimal,
        reason: String,
    },
    ClosePeriod {
        period: BillingPeriod,
        /// The caller's clock: a period cannot close before it ends.
        now: DateTime<Utc>,
        /// The tenant's tax policy, fetched by the caller.
        tax: TaxPolicy,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceBookOpened {
    pub account_id: Uuid,
    pub tenant_id: Uuid,
    pub currency: String,
    #[serde(with = "crate::peak::tz_name")]
    pub billing_tz: Tz,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChargeInvoiced {
    pub charge_id: Uuid,
    pub period: BillingPeriod,
    pub occurred_at: DateTime<Utc>,
    pub service: Service,
    pub destination: String,
    pub amount: Decimal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AdjustmentReason {
    /// The charge belongs to a period that had already closed.
    LateCharge,
    Correction {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdjustmentInvoiced {
    pub adjustment_id: Uuid,
    pub charge_id: Uuid,
    /// The period the charge belongs to.
    pub original_period: BillingPeriod,
    /// The open period the adjustment lands in.
    pub period: BillingPeriod,
    pub service: Service,
    pub destination: String,
    /// Signed: a correction downwards is negative.
    pub amount: Decimal,
    pub reason: AdjustmentReason,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeriodClosed {
    pub period: BillingPeriod,
    pub tax: TaxPolicy,
    /// The "as billed" figures, frozen.
    pub totals: InvoiceTotals,
}

/// The facts of an invoice book stream (`invoice-{account_id}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event_type", content = "payload")]
pub enum InvoiceEvent {
    #[serde(rename = "InvoiceBookOpened")]
    Opened(InvoiceBookOpened),
    #[serde(rename = "ChargeInvoiced")]
    ChargeInvoiced(ChargeInvoiced),
    #[serde(rename = "AdjustmentInvoiced")]
    AdjustmentInvoiced(AdjustmentInvoiced),
    #[serde(rename = "PeriodClosed")]
    PeriodClosed(PeriodClosed),
}

impl InvoiceEvent {
    pub fn event_type(&self) -> &'static str {
        match self {
            InvoiceEvent::Opened(_) => "InvoiceBookOpened",
            InvoiceEvent::ChargeInvoiced(_) => "ChargeInvoiced",
            InvoiceEvent::AdjustmentInvoiced(_) => "AdjustmentInvoiced",
            InvoiceEvent::PeriodClosed(_) => "PeriodClosed",
        }
    }
}

crate::events::impl_event_payload!(InvoiceEvent);

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InvoiceRejection {
    #[error("the invoice book is already open")]
    AlreadyOpened,
    #[error("the invoice book is not open")]
    NotOpened,
    #[error("amount {amount} is not allowed: {why}")]
    InvalidAmount { amount: Decimal, why: &'static str },
    #[error("charge {charge_id} is not on any invoice")]
    UnknownCharge { charge_id: Uuid },
    #[error("period {period} is already closed")]
    AlreadyClosed { period: BillingPeriod },
    #[error("period {period} has not ended yet")]
    NotEnded { period: BillingPeriod },
    #[error("period {period} is full")]
    PeriodFull { period: BillingPeriod },
    #[error("tax rate {rate_pct}% is outside 0 to {MAX_TAX_RATE_PCT}%")]
    InvalidTaxRate { rate_pct: Decimal },
}

/// One entry of a period: a charge or an adjustment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: Uuid,
    pub kind: LineKind,
    pub service: Service,
    pub destination: String,
    pub amount: Decimal,
}

/// Whether a line holds the period's own charges or adjustments for an earlier period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum LineKind {
    Charges,
    Adjustments { original_period: BillingPeriod },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeriodBook {
    pub entries: Vec<Entry>,
    pub closed: Option<PeriodClosed>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BookInfo {
    pub account_id: Uuid,
    pub tenant_id: Uuid,
    pub currency: String,
    pub billing_tz: Tz,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ChargeRef {
    period: BillingPeriod,
    service: Service,
    destination: String,
    /// The amount after every correction so far.
    amount: Decimal,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InvoiceState {
    pub info: Option<BookInfo>,
    pub periods: BTreeMap<BillingPeriod, PeriodBook>,
    charges: HashMap<Uuid, ChargeRef>,
    applied_ids: HashSet<Uuid>,
}

impl InvoiceState {
    pub fn is_closed(&self, period: BillingPeriod) -> bool {
        self.periods.get(&period).is_some_and(|book| book.closed.is_some())
    }

    /// The first period from `period` onwards that is not closed.
    pub fn first_open_from(&self, period: BillingPeriod) -> BillingPeriod {
        let mut candidate = period;
        // Closed periods are finitely many, so this ends.
        while self.is_closed(candidate) {
            candidate = candidate.next();
        }
        candidate
    }

    /// The amount a charge stands at on this book after every correction so far.
    pub fn charge_amount(&self, charge_id: Uuid) -> Option<Decimal> {
        self.charges.get(&charge_id).map(|charge| charge.amount)
    }

    fn entry_count(&self, period: BillingPeriod) -> usize {
        self.periods.get(&period).map_or(0, |book| book.entries.len())
    }
}

/// The stream an account's invoice book lives in.
pub fn stream_id(account_id: Uuid) -> String {
    format!("invoice-{account_id}")
}

pub fn decide(command: &InvoiceCommand, state: &InvoiceState) -> Result<Vec<InvoiceEvent>, InvoiceRejection> {
    if let InvoiceCommand::Open {
        account_id,
        tenant_id,
        currency,
        billing_tz,
    } = command
    {
        if state.info.is_some() {
            return Err(InvoiceRejection::AlreadyOpened);
        }
        return Ok(vec![InvoiceEvent::Opened(InvoiceBookOpened {
            account_id: *account_id,
            tenant_id: *tenant_id,
            currency: currency.clone(),
            billing_tz: *billing_tz,
        })]);
    }
    let Some(info) = &state.info else {
        return Err(InvoiceRejection::NotOpened);
    };
    match command {
        InvoiceCommand::Open { .. } => Err(InvoiceRejection::AlreadyOpened),
        InvoiceCommand::RecordCharge {
            charge_id,
            occurred_at,
            service,
            destination,
            amount,
        } => {
            if state.applied_ids.contains(charge_id) {
                return Ok(vec![]);
            }
            if amount.is_sign_negative() && !amount.is_zero() {
                return Err(InvoiceRejection::InvalidAmount {
                    amount: *amount,
                    why: "a charge is never negative; refunds are corrections",
                });
            }
            let period = BillingPeriod::containing(*occurred_at, info.billing_tz);
            let lands_in = state.first_open_from(period);
            if state.entry_count(lands_in) >= MAX_ENTRIES_PER_PERIOD {
                return Err(InvoiceRejection::PeriodFull { period: lands_in });
            }
            if lands_in == period {
                Ok(vec![InvoiceEvent::ChargeInvoiced(ChargeInvoiced {
                    charge_id: *charge_id,
                    period,
                    occurred_at: *occurred_at,
                    service: *service,
                    destination: destination.clone(),
                    amount: *amount,
                })])
            } else {
                Ok(vec![InvoiceEvent::AdjustmentInvoiced(AdjustmentInvoiced {
                    adjustment_id: *charge_id,
                    charge_id: *charge_id,
                    original_period: period,
                    period: lands_in,
                    service: *service,
                    destination: destination.clone(),
                    amount: *amount,
                    reason: AdjustmentReason::LateCharge,
                })])
            }
        }
        InvoiceCommand::CorrectCharge {
            correction_id,
            charge_id,
            corrected_amount,
            reason,
        } => {
            if state.applied_ids.contains(correction_id) {
                return Ok(vec![]);
            }
            let Some(charge) = state.charges.get(charge_id) else {
                return Err(InvoiceRejection::UnknownCharge { charge_id: *charge_id });
            };
            if corrected_amount.is_sign_negative() && !corrected_amount.is_zero() {
                return Err(InvoiceRejection::InvalidAmount {
                    amount: *corrected_amount,
                    why: "a corrected charge is never negative",
                });
            }
            let delta = *corrected_amount - charge.amount;
            if delta.is_zero() {
                return Ok(vec![]);
            }
            let lands_in = state.first_open_from(charge.period);
            if state.entry_count(lands_in) >= MAX_ENTRIES_PER_PERIOD {
                return Err(InvoiceRejection::PeriodFull { period: lands_in });
            }
            Ok(vec![InvoiceEvent::AdjustmentInvoiced(AdjustmentInvoiced {
                adjustment_id: *correction_id,
                charge_id: *charge_id,
                original_period: charge.period,
                period: lands_in,
                service: charge.service,
                destination: charge.destination.clone(),
                amount: delta,
                reason: AdjustmentReason::Correction { reason: reason.clone() },
            })])
        }
        InvoiceCommand::ClosePeriod { period, now, tax } => {
            if state.is_closed(*period) {
                return Err(InvoiceRejection::AlreadyClosed { period: *period });
            }
            if tax.rate_pct.is_sign_negative() || tax.rate_pct > MAX_TAX_RATE_PCT {
                return Err(InvoiceRejection::InvalidTaxRate { rate_pct: tax.rate_pct });
            }
            match period.ends_at(info.billing_tz) {
                Some(end) if end <= *now => {}
                _ => return Err(InvoiceRejection::NotEnded { period: *period }),
            }
            let totals = tax.totals(entries_sum(state, *period));
            Ok(vec![InvoiceEvent::PeriodClosed(PeriodClosed {
                period: *period,
                tax: *tax,
                totals,
            })])
        }
    }
}

/// Decide several commands as one decision (one append): each is decided against the state
/// the previous ones leave, and the first rejection rejects them all. A re-rating corrects
/// every charge of a book this way.
pub fn decide_all(commands: &[InvoiceCommand], state: &InvoiceState) -> Result<Vec<InvoiceEvent>, InvoiceRejection> {
    let mut scratch = state.clone();
    let mut out = Vec::new();
    for command in commands {
        for event in decide(command, &scratch)? {
            scratch = evolve(scratch, &event);
            out.push(event);
        }
    }
    Ok(out)
}

pub fn evolve(mut state: InvoiceState, event: &InvoiceEvent) -> InvoiceState {
    match event {
        InvoiceEvent::Opened(opened) => {
            state.info = Some(BookInfo {
                account_id: opened.account_id,
                tenant_id: opened.tenant_id,
                currency: opened.currency.clone(),
                billing_tz: opened.billing_tz,
            });
        }
        InvoiceEvent::ChargeInvoiced(charge) => {
            state.periods.entry(charge.period).or_default().entries.push(Entry {
                id: charge.charge_id,
                kind: LineKind::Charges,
                service: charge.service,
                destination: charge.destination.clone(),
                amount: charge.amount,
            });
            state.charges.insert(
                charge.charge_id,
                ChargeRef {
                    period: charge.period,
                    service: charge.service,
                    destination: charge.destination.clone(),
                    amount: charge.amount,
                },
            );
            state.applied_ids.insert(charge.charge_id);
        }
        InvoiceEvent::AdjustmentInvoiced(adjustment) => {
            state.periods.entry(adjustment.period).or_default().entries.push(Entry {
                id: adjustment.adjustment_id,
                kind: LineKind::Adjustments {
                    original_period: adjustment.original_period,
                },
                service: adjustment.service,
                destination: adjustment.destination.clone(),
                amount: adjustment.amount,
            });
            let charge = state.charges.entry(adjustment.charge_id).or_insert_with(|| ChargeRef {
                period: adjustment.original_period,
                service: adjustment.service,
                destination: adjustment.destination.clone(),
                amount: Decimal::ZERO,
            });
            charge.amount += adjustment.amount;
            state.applied_ids.insert(adjustment.adjustment_id);
        }
        InvoiceEvent::PeriodClosed(closed) => {
            state.periods.entry(closed.period).or_default().closed = Some(closed.clone());
        }
    }
    state
}

fn entries_sum(state: &InvoiceState, period: BillingPeriod) -> Decimal {
    let mut sum = Decimal::ZERO;
    if let Some(book) = state.periods.get(&period) {
        for entry in &book.entries {
            sum += entry.amount;
        }
    }
    sum
}

/// One grouped line of an invoice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceLine {
    pub service: Service,
    pub destination: String,
    pub kind: LineKind,
    pub count: u64,
    /// The exact sum of the posted charges on this line.
    pub amount: Decimal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InvoiceStatus {
    Open,
    Closed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invoice {
    pub account_id: Uuid,
    pub period: BillingPeriod,
    pub currency: String,
    pub status: InvoiceStatus,
    pub lines: Vec<InvoiceLine>,
    pub tax: TaxPolicy,
    pub totals: InvoiceTotals,
}

/// The invoice of a period as billed: its own entries. A closed period shows the tax policy
/// and totals frozen when it closed; an open one is a draft under `draft_tax`.
pub fn as_billed(state: &InvoiceState, period: BillingPeriod, draft_tax: TaxPolicy) -> Option<Invoice> {
    let info = state.info.as_ref()?;
    let book = state.periods.get(&period);
    let entries: Vec<&Entry> = book.map(|b| b.entries.iter().collect()).unwrap_or_default();
    let lines = group(&entries);
    let (status, tax, totals) = match book.and_then(|b| b.closed.as_ref()) {
        Some(closed) => (InvoiceStatus::Closed, closed.tax, closed.totals),
        None => (InvoiceStatus::Open, draft_tax, draft_tax.totals(sum_lines(&lines))),
    };
    Some(Invoice {
        account_id: info.account_id,
        period,
        currency: info.currency.clone(),
        status,
        lines,
        tax,
        totals,
    })
}

/// What a period would have been with every later correction: its own charges plus the
/// adjustments made for it, wherever they landed (adjustments it carries for earlier periods
/// belong to those).
pub fn as_corrected(state: &InvoiceState, period: BillingPeriod, draft_tax: TaxPolicy) -> Option<Invoice> {
    let info = state.info.as_ref()?;
    let mut entries = Vec::new();
    for book in state.periods.values() {
        for entry in &book.entries {
            let belongs = match entry.kind {
                LineKind::Charges => false,
                LineKind::Adjustments { original_period } => original_period == period,
            };
            if belongs {
                entries.push(entry);
            }
        }
    }
    if let Some(book) = state.periods.get(&period) {
        for entry in &book.entries {
            if entry.kind == LineKind::Charges {
                entries.push(entry);
            }
        }
    }
    let lines = group(&entries);
    let closed = state.periods.get(&period).and_then(|b| b.closed.as_ref());
    let tax = closed.map_or(draft_tax, |c| c.tax);
    Some(Invoice {
        account_id: info.account_id,
        period,
        currency: info.currency.clone(),
        status: if closed.is_some() {
            InvoiceStatus::Closed
        } else {
            InvoiceStatus::Open
        },
        totals: tax.totals(sum_lines(&lines)),
        lines,
        tax,
    })
}

fn group(entries: &[&Entry]) -> Vec<InvoiceLine> {
    let mut groups: BTreeMap<(Service, &str, LineKind), (u64, Decimal)> = BTreeMap::new();
    for entry in entries {
        let slot = groups
            .entry((entry.service, entry.destination.as_str(), entry.kind))
            .or_insert((0, Decimal::ZERO));
        slot.0 += 1;
        slot.1 += entry.amount;
    }
    let mut lines = Vec::with_capacity(groups.len());
    for ((service, destination, kind), (count, amount)) in groups {
        lines.push(InvoiceLine {
            service,
            destination: destination.to_string(),
            kind,
            count,
            amount,
        });
    }
    lines
}

fn sum_lines(lines: &[InvoiceLine]) -> Decimal {
    let mut sum = Decimal::ZERO;
    for line in lines {
        sum += line.amount;
    }
    sum
}

impl Invoice {
    /// A plain-text rendering, stable enough to snapshot.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = self.write_to(&mut out);
        out
    }

    fn write_to(&self, out: &mut String) -> fmt::Result {
        let status = match self.status {
            InvoiceStatus::Open => "draft",
            InvoiceStatus::Closed => "closed",
        };
        writeln!(
            out,
            "Invoice {} for account {} ({}, {})",
            self.period, self.account_id, self.currency, status
        )?;
        writeln!(
            out,
            "{:<12} {:<14} {:<22} {:>6} {:>14}",
            "service", "destination", "kind", "count", "amount"
        )?;
        for line in &self.lines {
            let kind = match line.kind {
                LineKind::Charges => "charges".to_string(),
                LineKind::Adjustments { original_period } => {
                    format!("adjustments {original_period}")
                }
            };
            writeln!(
                out,
                "{:<12} {:<14} {:<22} {:>6} {:>14}",
                line.service.as_str(),
                line.destination,
                kind,
                line.count,
                line.amount
            )?;
        }
        let mode = match self.tax.mode {
            TaxMode::Inclusive => "included",
            TaxMode::Exclusive => "added",
        };
        writeln!(out, "net   {:>14}", self.totals.net)?;
        writeln!(out, "tax   {:>14}  ({}% {})", self.totals.tax, self.tax.rate_pct, mode)?;
        writeln!(out, "total {:>14}", self.totals.total)
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).expect("test literal is a decimal")
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("test literal is RFC 3339")
            .with_timezone(&Utc)
    }

    fn opened() -> InvoiceEvent {
        InvoiceEvent::Opened(InvoiceBookOpened {
            account_id: Uuid::from_u128(1),
            tenant_id: Uuid::from_u128(2),
            currency: "EUR".to_string(),
            billing_tz: chrono_tz::Europe::Berlin,
        })
    }

    fn given(events: &[InvoiceEvent]) -> InvoiceState {
        events.iter().fold(InvoiceState::default(), evolve)
    }

    const MARCH: BillingPeriod = BillingPeriod { year: 2024, month: 3 };
    const APRIL: BillingPeriod = BillingPeriod { year: 2024, month: 4 };

    fn vat() -> TaxPolicy {
        TaxPolicy {
            rate_pct: d("19"),
            mode: TaxMode::Exclusive,
        }
    }

    fn record(id: u128, when: &str, amount: &str) -> InvoiceCommand {
        InvoiceCommand::RecordCharge {
            charge_id: Uuid::from_u128(id),
            occurred_at: at(when),
            service: Service::Calls,
            destination: "4930".to_string(),
            amount: d(amount),
        }
    }

    #[test]
    fn periods_follow_the_billing_time_zone() {
        let berlin = chrono_tz::Europe::Berlin;
        // 23:30 UTC on 31 March is already April in Berlin.
        assert_eq!(BillingPeriod::containing(at("2024-03-31T23:30:00Z"), berlin), APRIL);
        assert_eq!(MARCH.starts_at(berlin), Some(at("2024-02-29T23:00:00Z")));
        assert_eq!(MARCH.ends_at(berlin), Some(at("2024-03-31T22:00:00Z")));
    }

    /// A given/when/then row: name, history, command, expected decision.
    type Case = (
        &'static str,
        Vec<InvoiceEvent>,
        InvoiceCommand,
        Result<Vec<InvoiceEvent>, InvoiceRejection>,
    );

    #[test]
    fn given_when_then() {
        let charge_in_march = InvoiceEvent::ChargeInvoiced(ChargeInvoiced {
            charge_id: Uuid::from_u128(10),
            period: MARCH,
            occurred_at: at("2024-03-10T10:00:00Z"),
            service: Service::Calls,
            destination: "4930".to_string(),
            amount: d("1.00000"),
        });
        let march_closed = InvoiceEvent::PeriodClosed(PeriodClosed {
            period: MARCH,
            tax: vat(),
            totals: vat().totals(d("1.00000")),
        });
        let cases: Vec<Case> = vec![
            (
                "a charge lands in its period",
                vec![opened()],
                record(10, "2024-03-10T10:00:00Z", "1.00000"),
                Ok(vec![charge_in_march.clone()]),
            ),
            (
                "a late charge for a closed period becomes an adjustment in the next",
                vec![opened(), charge_in_march.clone(), march_closed.clone()],
                record(11, "2024-03-20T10:00:00Z", "0.50000"),
                Ok(vec![InvoiceEvent::AdjustmentInvoiced(AdjustmentInvoiced {
                    adjustment_id: Uuid::from_u128(11),
                    charge_id: Uuid::from_u128(11),
                    original_period: MARCH,
                    period: APRIL,
                    service: Service::Calls,
                    destination: "4930".to_string(),
                    amount: d("0.50000"),
                    reason: AdjustmentReason::LateCharge,
                })]),
            ),
            (
                "a correction of a closed period's charge lands in the next open period",
                vec![opened(), charge_in_march.clone(), march_closed.clone()],
                InvoiceCommand::CorrectCharge {
                    correction_id: Uuid::from_u128(20),
                    charge_id: Uuid::from_u128(10),
                    corrected_amount: d("0.80000"),
                    reason: "misrated prefix".to_string(),
                },
                Ok(vec![InvoiceEvent::AdjustmentInvoiced(AdjustmentInvoiced {
                    adjustment_id: Uuid::from_u128(20),
                    charge_id: Uuid::from_u128(10),
                    original_period: MARCH,
                    period: APRIL,
                    service: Service::Calls,
                    destination: "4930".to_string(),
                    amount: d("-0.20000"),
                    reason: AdjustmentReason::Correction {
                        reason: "misrated prefix".to_string(),
                    },
                })]),
            ),
            (
                "a period cannot close before it ends",
                vec![opened()],
                InvoiceCommand::ClosePeriod {
                    period: MARCH,
                    now: at("2024-03-31T21:59:59Z"),
                    tax: vat(),
                },
                Err(InvoiceRejection::NotEnded { period: MARCH }),
            ),
            (
                "a closed period cannot close again",
                vec![opened(), march_closed.clone()],
                InvoiceCommand::ClosePeriod {
                    period: MARCH,
                    now: at("2024-05-01T00:00:00Z"),
                    tax: vat(),
                },
                Err(InvoiceRejection::AlreadyClosed { period: MARCH }),
            ),
            (
                "closing freezes the as-billed totals",
                vec![opened(), charge_in_march.clone()],
                InvoiceCommand::ClosePeriod {
                    period: MARCH,
                    now: at("2024-03-31T22:00:00Z"),
                    tax: vat(),
                },
                Ok(vec![march_closed.clone()]),
            ),
        ];
        for (name, history, command, expected) in cases {
            assert_eq!(decide(&command, &given(&history)), expected, "{name}");
        }
    }

    #[test]
    fn corrections_decided_together_land_as_one_decision() {
        let march_charge = |id: u128, amount: &str| {
            InvoiceEvent::ChargeInvoiced(ChargeInvoiced {
                charge_id: Uuid::from_u128(id),
                period: MARCH,
                occurred_at: at("2024-03-10T10:00:00Z"),
                service: Service::Calls,
                destination: "49".to_string(),
                amount: d(amount),
            })
        };
        let state = given(&[
            opened(),
            march_charge(10, "0.90000"),
            march_charge(11, "0.30000"),
            InvoiceEvent::PeriodClosed(PeriodClosed {
                period: MARCH,
                tax: vat(),
                totals: vat().totals(d("1.20000")),
            }),
        ]);
        let correct = |correction: u128, charge: u128, amount: &str| InvoiceCommand::CorrectCharge {
            correction_id: Uuid::from_u128(correction),
            charge_id: Uuid::from_u128(charge),
            corrected_amount: d(amount),
            reason: "tariff 1 revision 1".to_string(),
        };
        let events = decide_all(
            &[
                correct(20, 10, "0.60000"),
                correct(21, 11, "0.30000"),
                correct(22, 10, "0.50000"),
            ],
            &state,
        )
        .expect("valid corrections");
        let amounts: Vec<(BillingPeriod, Decimal)> = events
            .iter()
            .map(|e| match e {
                InvoiceEvent::AdjustmentInvoiced(a) => (a.period, a.amount),
                other => panic!("only adjustments: {other:?}"),
            })
            .collect();
        // The unchanged charge gives no line; the second correction of charge 10 sees the first.
        assert_eq!(amounts, vec![(APRIL, d("-0.30000")), (APRIL, d("-0.10000"))]);
        let after = events.iter().fold(state.clone(), evolve);
        assert_eq!(after.charge_amount(Uuid::from_u128(10)), Some(d("0.50000")));
        assert_eq!(
            as_billed(&after, MARCH, vat()).map(|i| i.totals.total),
            Some(d("1.43")),
            "as billed stays frozen"
        );
        assert_eq!(
            as_corrected(&after, MARCH, vat()).map(|i| i.totals.total),
            Some(d("0.95"))
        );
        assert_eq!(
            decide_all(&[correct(23, 99, "1")], &state),
            Err(InvoiceRejection::UnknownCharge {
                charge_id: Uuid::from_u128(99)
            })
        );
    }

    #[test]
    fn taxes_inclusive_and_exclusive_add_up() {
        let exclusive = vat().totals(d("10.004"));
        assert_eq!(
            (exclusive.net, exclusive.tax, exclusive.total),
            (d("10.00"), d("1.90"), d("11.90"))
        );
        let inclusive = TaxPolicy {
            rate_pct: d("19"),
            mode: TaxMode::Inclusive,
        }
        .totals(d("11.90"));
        assert_eq!(
            (inclusive.net, inclusive.tax, inclusive.total),
            (d("10.00"), d("1.90"), d("11.90"))
        );
    }
}
