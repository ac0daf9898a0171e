//! Accounts as deciders: prepaid and postpaid balances, fund reservations and call authorization.
//!
//! Only top-ups, adjustments and settled charges move a balance. A call is authorized by
//! reserving the charge of its maximum duration; the funds a decision may use are
//! `balance + credit limit - open reservations`, so concurrent calls can never together
//! reserve more than the account holds. A call is ended at its maximum duration, so its charge
//! never exceeds its reservation (charges never decrease with duration); a charge is a fact,
//! though, and a settlement larger than its reservation is still posted, and reported.
//!
//! Commands are idempotent by their caller-chosen ids (payment, adjustment, reservation,
//! charge): repeating one decides no new events.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use uuid::Uuid;

use crate::rating::{self, AuthorizationError, MaxDuration, RateCard, RatingError};
use crate::tariff::Prefix;

/// The most calls one account may have authorized at once.
pub const MAX_OPEN_RESERVATIONS: usize = 1_000;

/// The largest single top-up, adjustment or charge, and the largest credit limit.
pub const MAX_AMOUNT: Decimal = Decimal::from_parts(1_000_000_000, 0, 0, false, 0);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AccountKind {
    /// Debit: calls spend the balance, which may not go below zero.
    Prepaid,
    /// Credit: calls may take the balance down to minus the credit limit.
    Postpaid { credit_limit: Decimal },
}

impl AccountKind {
    pub fn credit_limit(&self) -> Decimal {
        match self {
            AccountKind::Prepaid => Decimal::ZERO,
            AccountKind::Postpaid { credit_limit } => *credit_limit,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountCommand {
    Open {
        account_id: Uuid,
        tenant_id: Uuid,
        kind: AccountKind,
        currency: String,
        billing_tz: Tz,
    },
    TopUp {
        payment_id: Uuid,
        amount: Decimal,
    },
    /// A signed correction by finance (a credit note, a goodwill gesture, a late fix).
    Adjust {
        adjustment_id: Uuid,
        amount: Decimal,
        reason: String,
    },
    /// Authorize a call: reserve the charge of the longest call the funds allow.
    Reserve {
        reservation_id: Uuid,
        call_id: Uuid,
        /// The rate of the destination in the tariff version in force, fetched by the caller.
        rate_card: RateCard,
        /// The answer (or authorization) time, from the caller's clock.
        now: DateTime<Utc>,
        /// Grant at most this long, even if the funds allow more.
        duration_cap_s: Option<u32>,
    },
    Release {
        reservation_id: Uuid,
    },
    /// Rate this account's calls answered from `effective_from` on with `tariff_id`.
    AssignTariff {
        tariff_id: Uuid,
        effective_from: DateTime<Utc>,
        /// The caller's clock: an assignment may not take effect in the past, or calls
        /// already rated would rate differently on replay.
        now: DateTime<Utc>,
    },
    Settle {
        charge_id: Uuid,
        call_id: Uuid,
        /// The reservation the call was authorized with, if any (postpaid calls may have none).
        reservation_id: Option<Uuid>,
        /// The posted charge.
        amount: Decimal,
        currency: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountOpened {
    pub account_id: Uuid,
    pub tenant_id: Uuid,
    pub kind: AccountKind,
    pub currency: String,
    #[serde(with = "crate::peak::tz_name")]
    pub billing_tz: Tz,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FundsToppedUp {
    pub payment_id: Uuid,
    pub amount: Decimal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountAdjusted {
    pub adjustment_id: Uuid,
    pub amount: Decimal,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FundsReserved {
    pub reservation_id: Uuid,
    pub call_id: Uuid,
    pub amount: Decimal,
    pub max_duration: MaxDuration,
    pub tariff_id: Uuid,
    pub tariff_version: u32,
    pub matched_prefix: Prefix,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservationReleased {
    pub reservation_id: Uuid,
    pub amount: Decimal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChargeSettled {
    pub charge_id: Uuid,
    pub call_id: Uuid,
    pub reservation_id: Option<Uuid>,
    pub amount: Decimal,
    /// The reservation this settlement closes (zero without one).
    pub released: Decimal,
    /// How much the charge exceeded its reservation; zero whenever the call was ended at its
    /// maximum duration.
    pub exceeded_reservation_by: Decimal,
}

/// From `effective_from` on, the account's calls are rated with this tariff (the version of
/// it in force at each call's answer time).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TariffAssigned {
    pub tariff_id: Uuid,
    pub effective_from: DateTime<Utc>,
}

/// The facts of an account stream (`account-{id}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event_type", content = "payload")]
pub enum AccountEvent {
    #[serde(rename = "AccountOpened")]
    Opened(AccountOpened),
    #[serde(rename = "FundsToppedUp")]
    ToppedUp(FundsToppedUp),
    #[serde(rename = "AccountAdjusted")]
    Adjusted(AccountAdjusted),
    #[serde(rename = "FundsReserved")]
    Reserved(FundsReserved),
    #[serde(rename = "ReservationReleased")]
    Released(ReservationReleased),
    #[serde(rename = "ChargeSettled")]
    Settled(ChargeSettled),
    #[serde(rename = "TariffAssigned")]
    TariffAssigned(TariffAssigned),
}

impl AccountEvent {
    pub fn event_type(&self) -> &'static str {
        match self {
            AccountEvent::Opened(_) => "AccountOpened",
            AccountEvent::ToppedUp(_) => "FundsToppedUp",
            AccountEvent::Adjusted(_) => "AccountAdjusted",
            AccountEvent::Reserved(_) => "FundsReserved",
            AccountEvent::Released(_) => "ReservationReleased",
            AccountEvent::Settled(_) => "ChargeSettled",
            AccountEvent::TariffAssigned(_) => "TariffAssigned",
        }
    }
}

crate::events::impl_event_payload!(AccountEvent);

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AccountRejection {
    #[error("the account is already open")]
    AlreadyOpened,
    #[error("the account is not open")]
    NotOpened,
    #[error("currency '{currency}' is not an ISO 4217 code")]
    InvalidCurrency { currency: String },
    #[error("amount {amount} is not allowed here: {why}")]
    InvalidAmount { amount: Decimal, why: &'static str },
    #[error("the account is in {account} but this is in {other}")]
    CurrencyMismatch { account: String, other: String },
    #[error("available funds {available} do not cover the first interval ({first_charge})")]
    InsufficientFunds { available: Decimal, first_charge: Decimal },
    #[error("{MAX_OPEN_RESERVATIONS} calls are already authorized on this account")]
    TooManyReservations,
    #[error("reservation {reservation_id} is not open")]
    UnknownReservation { reservation_id: Uuid },
    #[error("id {id} was already used by another command")]
    IdReused { id: Uuid },
    #[error("a tariff may not be assigned from the past ({effective_from} is before {now})")]
    AssignedInThePast {
        effective_from: DateTime<Utc>,
        now: DateTime<Utc>,
    },
    #[error("a tariff assignment must take effect after the previous one ({previous})")]
    AssignmentNotAfterPrevious { previous: DateTime<Utc> },
    #[error(transparent)]
    Rating(#[from] RatingError),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountInfo {
    pub account_id: Uuid,
    pub tenant_id: Uuid,
    pub kind: AccountKind,
    pub currency: String,
    pub billing_tz: Tz,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    pub call_id: Uuid,
    pub amount: Decimal,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccountState {
    pub info: Option<AccountInfo>,
    /// Top-ups + adjustments - settled charges.
    pub balance: Decimal,
    pub reservations: BTreeMap<Uuid, Reservation>,
    /// Sum of `reservations`, kept alongside so `available` is O(1).
    pub reserved: Decimal,
    /// Ids of every command that took effect, for idempotency.
    pub applied_ids: HashSet<Uuid>,
    /// Tariff assignments, oldest first (strictly increasing `effective_from`).
    pub tariffs: Vec<TariffAssigned>,
}

impl AccountState {
    /// The tariff that rates a call answered at `at`: the latest assignment not after it.
    pub fn tariff_at(&self, at: DateTime<Utc>) -> Option<Uuid> {
        tariff_in_force(&self.tariffs, at)
    }

    /// What a new reservation may use: balance + credit limit - open reservations.
    pub fn available(&self) -> Decimal {
        let credit_limit = self
            .info
            .as_ref()
            .map(|info| info.kind.credit_limit())
            .unwrap_or_default();
        self.balance + credit_limit - self.reserved
    }
}

/// The assignment in force at `at` among assignments sorted by `effective_from`.
pub fn tariff_in_force(assignments: &[TariffAssigned], at: DateTime<Utc>) -> Option<Uuid> {
    let count = assignments.partition_point(|a| a.effective_from <= at);
    count.checked_sub(1).map(|i| assignments[i].tariff_id)
}

/// The stream an account's events live in.
pub fn stream_id(account_id: Uuid) -> String {
    format!("account-{account_id}")
}

pub fn decide(command: &AccountCommand, state: &AccountState) -> Result<Vec<AccountEvent>, AccountRejection> {
    if let AccountCommand::Open {
        account_id,
        tenant_id,
        kind,
        currency,
        billing_tz,
    } = command
    {
        if state.info.is_some() {
            return Err(AccountRejection::AlreadyOpened);
        }
        check_currency(currency)?;
        if let AccountKind::Postpaid { credit_limit } = kind {
            check_amount(*credit_limit, "a credit limit must be zero or positive", true)?;
        }
        return Ok(vec![AccountEvent::Opened(AccountOpened {
            account_id: *account_id,
            tenant_id: *tenant_id,
            kind: *kind,
            currency: currency.clone(),
            billing_tz: *billing_tz,
        })]);
    }
    let Some(info) = &state.info else {
        return Err(AccountRejection::NotOpened);
    };
    match command {
        AccountCommand::Open { .. } => Err(AccountRejection::AlreadyOpened),
        AccountCommand::TopUp { payment_id, amount } => {
            if state.applied_ids.contains(payment_id) {
                return Ok(vec![]);
            }
            check_amount(*amount, "a top-up must be positive", false)?;
            Ok(vec![AccountEvent::ToppedUp(FundsToppedUp {
                payment_id: *payment_id,
                amount: *amount,
            })])
        }
        AccountCommand::Adjust {
            adjustment_id,
            amount,
            reason,
        } => {
            if state.applied_ids.contains(adjustment_id) {
                return Ok(vec![]);
            }
            if amount.is_zero() || amount.abs() > MAX_AMOUNT {
                return Err(AccountRejection::InvalidAmount {
                    amount: *amount,
                    why: "an adjustment must be non-zero and within limits",
                });
            }
            Ok(vec![AccountEvent::Adjusted(AccountAdjusted {
                adjustment_id: *adjustment_id,
                amount: *amount,
                reason: reason.clone(),
            })])
        }
        AccountCommand::Reserve {
            reservation_id,
            call_id,
            rate_card,
            now,
            duration_cap_s,
        } => {
            if state.applied_ids.contains(reservation_id) {
                return Ok(vec![]);
            }
            if rate_card.currency != info.currency {
                return Err(AccountRejection::CurrencyMismatch {
                    account: info.currency.clone(),
                    other: rate_card.currency.clone(),
                });
            }
            if state.reservations.len() >= MAX_OPEN_RESERVATIONS {
                return Err(AccountRejection::TooManyReservations);
            }
            rate_card
                .rate
                .validate()
                .map_err(|_| AccountRejection::Rating(RatingError::Overflow))?;
            let limit_s = duration_cap_s.unwrap_or(rating::MAX_CALL_DURATION_S);
            let context = rate_card.context(info.billing_tz);
            let max_duration = match rating::max_duration(&context, *now, state.available(), limit_s) {
                Ok(max_duration) => max_duration,
                Err(AuthorizationError::InsufficientFunds {
                    available,
                    first_charge,
                }) => {
                    return Err(AccountRejection::InsufficientFunds {
                        available,
                        first_charge,
                    })
                }
                Err(AuthorizationError::Rating(error)) => return Err(error.into()),
            };
            Ok(vec![AccountEvent::Reserved(FundsReserved {
                reservation_id: *reservation_id,
                call_id: *call_id,
                amount: max_duration.charge_at_actual,
                max_duration,
                tariff_id: rate_card.tariff_id,
                tariff_version: rate_card.tariff_version,
                matched_prefix: rate_card.rate.prefix,
            })])
        }
        AccountCommand::Release { reservation_id } => {
            match state.reservations.get(reservation_id) {
                Some(reservation) => Ok(vec![AccountEvent::Released(ReservationReleased {
                    reservation_id: *reservation_id,
                    amount: reservation.amount,
                })]),
                // Already released or settled: nothing more to do.
                None if state.applied_ids.contains(reservation_id) => Ok(vec![]),
                None => Err(AccountRejection::UnknownReservation {
                    reservation_id: *reservation_id,
                }),
            }
        }
        AccountCommand::AssignTariff {
            tariff_id,
            effective_from,
            now,
        } => {
            if state
                .tariffs
                .last()
                .is_some_and(|last| last.tariff_id == *tariff_id && last.effective_from == *effective_from)
            {
                // The same assignment again: nothing new happens.
                return Ok(vec![]);
            }
            if effective_from < now {
                return Err(AccountRejection::AssignedInThePast {
                    effective_from: *effective_from,
                    now: *now,
                });
            }
            if let Some(last) = state.tariffs.last() {
                if *effective_from <= last.effective_from {
                    return Err(AccountRejection::AssignmentNotAfterPrevious {
                        previous: last.effective_from,
                    });
                }
            }
            Ok(vec![AccountEvent::TariffAssigned(TariffAssigned {
                tariff_id: *tariff_id,
                effective_from: *effective_from,
            })])
        }
        AccountCommand::Settle {
            charge_id,
            call_id,
            reservation_id,
            amount,
            currency,
        } => {
            if state.applied_ids.contains(charge_id) {
                return Ok(vec![]);
            }
            if *currency != info.currency {
                return Err(AccountRejection::CurrencyMismatch {
                    account: info.currency.clone(),
                    other: currency.clone(),
                });
            }
            check_amount(*amount, "a charge must be zero or positive", true)?;
            let released = match reservation_id {
                None => Decimal::ZERO,
                Some(id) => match state.reservations.get(id) {
                    Some(reservation) => reservation.amount,
                    None => return Err(AccountRejection::UnknownReservation { reservation_id: *id }),
                },
            };
            let exceeded_reservation_by = if reservation_id.is_some() && *amount > released {
                *amount - released
            } else {
                Decimal::ZERO
            };
            Ok(vec![AccountEvent::Settled(ChargeSettled {
                charge_id: *charge_id,
                call_id: *call_id,
                reservation_id: *reservation_id,
                amount: *amount,
                released,
                exceeded_reservation_by,
            })])
        }
    }
}

pub fn evolve(mut state: AccountState, event: &AccountEvent) -> AccountState {
    match event {
        AccountEvent::Opened(opened) => {
            state.info = Some(AccountInfo {
                account_id: opened.account_id,
                tenant_id: opened.tenant_id,
                kind: opened.kind,
                currency: opened.currency.clone(),
                billing_tz: opened.billing_tz,
            });
        }
        AccountEvent::ToppedUp(topped_up) => {
            state.balance += topped_up.amount;
            state.applied_ids.insert(topped_up.payment_id);
        }
        AccountEvent::Adjusted(adjusted) => {
            state.balance += adjusted.amount;
            state.applied_ids.insert(adjusted.adjustment_id);
        }
        AccountEvent::Reserved(reserved) => {
            state.reservations.insert(
                reserved.reservation_id,
                Reservation {
                    call_id: reserved.call_id,
                    amount: reserved.amount,
                },
            );
            state.reserved += reserved.amount;
            state.applied_ids.insert(reserved.reservation_id);
        }
        AccountEvent::Released(released) => {
            if let Some(reservation) = state.reservations.remove(&released.reservation_id) {
                state.reserved -= reservation.amount;
            }
        }
        AccountEvent::Settled(settled) => {
            if let Some(id) = settled.reservation_id {
                if let Some(reservation) = state.reservations.remove(&id) {
                    state.reserved -= reservation.amount;
                }
            }
            state.balance -= settled.amount;
            state.applied_ids.insert(settled.charge_id);
        }
        AccountEvent::TariffAssigned(assigned) => {
            state.tariffs.push(assigned.clone());
        }
    }
    state
}

fn check_currency(currency: &str) -> Result<(), AccountRejection> {
    if currency.len() == 3 && currency.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err(AccountRejection::InvalidCurrency {
            currency: currency.to_string(),
        })
    }
}

fn check_amount(amount: Decimal, why: &'static str, zero_allowed: bool) -> Result<(), AccountRejection> {
    let too_small = if zero_allowed {
        amount.is_sign_negative() && !amount.is_zero()
    } else {
        amount <= Decimal::ZERO
    };
    if too_small || amount > MAX_AMOUNT {
        return Err(AccountRejection::InvalidAmount { amount, why });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;
    use crate::tariff::Rate;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).expect("test literal is a decimal")
    }

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn card(price: &str) -> RateCard {
        RateCard {
            tariff_id: id(900),
            tariff_version: 1,
            currency: "EUR".to_string(),
            rate: Rate::simple(Prefix::parse("49").expect("valid prefix"), 60, 60, d(price)),
            offpeak_window: None,
            crossing: Default::default(),
            posting: Default::default(),
        }
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).expect("valid timestamp")
    }

    fn opened(kind: AccountKind) -> AccountEvent {
        AccountEvent::Opened(AccountOpened {
            account_id: id(1),
            tenant_id: id(2),
            kind,
            currency: "EUR".to_string(),
            billing_tz: chrono_tz::Europe::Berlin,
        })
    }

    fn topped_up(payment: u128, amount: &str) -> AccountEvent {
        AccountEvent::ToppedUp(FundsToppedUp {
            payment_id: id(payment),
            amount: d(amount),
        })
    }

    fn reserve(reservation: u128, cap: Option<u32>) -> AccountCommand {
        AccountCommand::Reserve {
            reservation_id: id(reservation),
            call_id: id(reservation + 1000),
            rate_card: card("0.10"),
            now: now(),
            duration_cap_s: cap,
        }
    }

    fn given(events: &[AccountEvent]) -> AccountState {
        events.iter().fold(AccountState::default(), evolve)
    }

    /// One row of a given/when/then table.
    struct Case {
        name: &'static str,
        given: Vec<AccountEvent>,
        when: AccountCommand,
        then: Result<Vec<AccountEvent>, AccountRejection>,
    }

    fn reserved(reservation: u128, amount: &str, actual_s: u32, limited: bool) -> AccountEvent {
        AccountEvent::Reserved(FundsReserved {
            reservation_id: id(reservation),
            call_id: id(reservation + 1000),
            amount: d(amount),
            max_duration: MaxDuration {
                actual_s,
                announced_min: actual_s / 60,
                charge_at_actual: d(amount),
                limited,
            },
            tariff_id: id(900),
            tariff_version: 1,
            matched_prefix: Prefix::parse("49").expect("valid prefix"),
        })
    }

    #[test]
    fn given_when_then() {
        let cases = vec![
            Case {
                name: "top-up before opening is rejected",
                given: vec![],
                when: AccountCommand::TopUp {
                    payment_id: id(10),
                    amount: d("5"),
                },
                then: Err(AccountRejection::NotOpened),
            },
            Case {
                name: "a top-up is credited",
                given: vec![opened(AccountKind::Prepaid)],
                when: AccountCommand::TopUp {
                    payment_id: id(10),
                    amount: d("5"),
                },
                then: Ok(vec![topped_up(10, "5")]),
            },
            Case {
                name: "a repeated top-up has one effect",
                given: vec![opened(AccountKind::Prepaid), topped_up(10, "5")],
                when: AccountCommand::TopUp {
                    payment_id: id(10),
                    amount: d("5"),
                },
                then: Ok(vec![]),
            },
            Case {
                name: "a negative top-up is rejected",
                given: vec![opened(AccountKind::Prepaid)],
                when: AccountCommand::TopUp {
                    payment_id: id(10),
                    amount: d("-5"),
                },
                then: Err(AccountRejection::InvalidAmount {
                    amount: d("-5"),
                    why: "a top-up must be positive",
                }),
            },
            Case {
                name: "a reservation takes the charge of the maximum duration",
                given: vec![opened(AccountKind::Prepaid), topped_up(10, "5.00")],
                when: reserve(20, None),
                then: Ok(vec![reserved(20, "5.00000", 3000, false)]),
            },
            Case {
                name: "a capped reservation takes only the cap",
                given: vec![opened(AccountKind::Prepaid), topped_up(10, "5.00")],
                when: reserve(20, Some(330)),
                then: Ok(vec![reserved(20, "0.50000", 300, true)]),
            },
            Case {
                name: "an empty prepaid account cannot call",
                given: vec![opened(AccountKind::Prepaid)],
                when: reserve(20, None),
                then: Err(AccountRejection::InsufficientFunds {
                    available: d("0"),
                    first_charge: d("0.10000"),
                }),
            },
            Case {
                name: "a postpaid account calls on its credit limit",
                given: vec![opened(AccountKind::Postpaid {
                    credit_limit: d("1.00"),
                })],
                when: reserve(20, None),
                then: Ok(vec![reserved(20, "1.00000", 600, false)]),
            },
            Case {
                name: "settling closes the reservation and reports no excess",
                given: vec![
                    opened(AccountKind::Prepaid),
                    topped_up(10, "5.00"),
                    reserved(20, "5.00000", 3000, false),
                ],
                when: AccountCommand::Settle {
                    charge_id: id(30),
                    call_id: id(1020),
                    reservation_id: Some(id(20)),
                    amount: d("0.30000"),
                    currency: "EUR".to_string(),
                },
                then: Ok(vec![AccountEvent::Settled(ChargeSettled {
                    charge_id: id(30),
                    call_id: id(1020),
                    reservation_id: Some(id(20)),
                    amount: d("0.30000"),
                    released: d("5.00000"),
                    exceeded_reservation_by: d("0"),
                })]),
            },
            Case {
                name: "releasing twice has one effect",
                given: vec![
                    opened(AccountKind::Prepaid),
                    topped_up(10, "5.00"),
                    reserved(20, "5.00000", 3000, false),
                    AccountEvent::Released(ReservationReleased {
                        reservation_id: id(20),
                        amount: d("5.00000"),
                    }),
                ],
                when: AccountCommand::Release { reservation_id: id(20) },
                then: Ok(vec![]),
            },
            Case {
                name: "releasing an unknown reservation is rejected",
                given: vec![opened(AccountKind::Prepaid)],
                when: AccountCommand::Release { reservation_id: id(77) },
                then: Err(AccountRejection::UnknownReservation { reservation_id: id(77) }),
            },
            Case {
                name: "a charge in another currency is rejected",
                given: vec![opened(AccountKind::Prepaid)],
                when: AccountCommand::Settle {
                    charge_id: id(30),
                    call_id: id(1020),
                    reservation_id: None,
                    amount: d("0.3"),
                    currency: "USD".to_string(),
                },
                then: Err(AccountRejection::CurrencyMismatch {
                    account: "EUR".to_string(),
                    other: "USD".to_string(),
                }),
            },
        ];
        for case in cases {
            let state = given(&case.given);
            assert_eq!(decide(&case.when, &state), case.then, "{}", case.name);
        }
    }

    #[test]
    fn tariff_assignments_are_forward_only_and_the_one_in_force_rates() {
        let later = now() + chrono::TimeDelta::hours(1);
        let assigned = |tariff: u128, at: DateTime<Utc>| {
            AccountEvent::TariffAssigned(TariffAssigned {
                tariff_id: id(tariff),
                effective_from: at,
            })
        };
        let assign = |tariff: u128, at: DateTime<Utc>| AccountCommand::AssignTariff {
            tariff_id: id(tariff),
            effective_from: at,
            now: now(),
        };
        let cases = vec![
            Case {
                name: "an open account takes a tariff from now on",
                given: vec![opened(AccountKind::Prepaid)],
                when: assign(900, now()),
                then: Ok(vec![assigned(900, now())]),
            },
            Case {
                name: "not from the past",
                given: vec![opened(AccountKind::Prepaid)],
                when: assign(900, now() - chrono::TimeDelta::seconds(1)),
                then: Err(AccountRejection::AssignedInThePast {
                    effective_from: now() - chrono::TimeDelta::seconds(1),
                    now: now(),
                }),
            },
            Case {
                name: "the same assignment twice is one",
                given: vec![opened(AccountKind::Prepaid), assigned(900, now())],
                when: assign(900, now()),
                then: Ok(vec![]),
            },
            Case {
                name: "a new assignment must follow the last",
                given: vec![opened(AccountKind::Prepaid), assigned(900, later)],
                when: assign(901, now()),
                then: Err(AccountRejection::AssignmentNotAfterPrevious { previous: later }),
            },
            Case {
                name: "not before the account is open",
                given: vec![],
                when: assign(900, now()),
                then: Err(AccountRejection::NotOpened),
            },
        ];
        for case in cases {
            let state = given(&case.given);
            assert_eq!(decide(&case.when, &state), case.then, "{}", case.name);
        }
        let state = given(&[opened(AccountKind::Prepaid), assigned(900, now()), assigned(901, later)]);
        assert_eq!(state.tariff_at(now() - chrono::TimeDelta::seconds(1)), None);
        assert_eq!(state.tariff_at(now()), Some(id(900)));
        assert_eq!(state.tariff_at(later - chrono::TimeDelta::seconds(1)), Some(id(900)));
        assert_eq!(state.tariff_at(later), Some(id(901)));
    }

    #[test]
    fn events_round_trip_through_payloads() {
        let events = vec![
            opened(AccountKind::Postpaid {
                credit_limit: d("12.50"),
            }),
            topped_up(10, "5.00"),
            reserved(20, "5.00000", 3000, false),
            AccountEvent::TariffAssigned(TariffAssigned {
                tariff_id: id(900),
                effective_from: now(),
            }),
        ];
        for event in events {
            let payload = event.to_payload().expect("events encode");
            let back = AccountEvent::from_payload(event.event_type(), event.schema_version(), payload)
                .expect("payload decodes");
            assert_eq!(back, event);
        }
        let payload = topped_up(10, "5.00").to_payload().expect("events encode");
        assert_eq!(payload["amount"], serde_json::json!("5.00"));
    }
}
