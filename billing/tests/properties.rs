//! Property tests of rating and accounts: monotone, never negative, split covers the whole,
//! maximum duration is tight, and concurrent reservations never overdraw.

use std::collections::BTreeMap;

use billing::account::{self, AccountCommand, AccountEvent, AccountKind, AccountState};
use billing::rating::{self, PricingContext, RateCard, MAX_CALL_DURATION_S};
use billing::tariff::{Crossing, PeriodPrices, Prefix, Rate};
use billing::{OffPeakWindow, Posting, RoundingMode};
use chrono::{DateTime, NaiveTime, TimeDelta, Utc};
use chrono_tz::Tz;
use proptest::prelude::*;
use rust_decimal::Decimal;
use uuid::Uuid;

/// A price with up to 5 places, 0 to 1.00000 per minute.
fn price() -> impl Strategy<Value = Decimal> {
    (0i64..=100_000).prop_map(|n| Decimal::new(n, 5))
}

fn rate() -> impl Strategy<Value = Rate> {
    (
        (1u32..=120, 1u32..=120),
        (price(), price(), price()),
        (0u32..=30, 0u32..=10),
        (0i64..=5_000).prop_map(|n| Decimal::new(n, 2)),
        proptest::option::of((price(), price())),
    )
        .prop_map(
            |((first_interval_s, next_interval_s), (first, next, fee), (free, grace), pct, off)| {
                Rate {
                    // A literal prefix is valid.
                    prefix: Prefix::parse("49").expect("valid prefix"),
                    first_interval_s,
                    next_interval_s,
                    first_price_per_minute: first,
                    next_price_per_minute: next,
                    connection_fee: fee,
                    free_seconds: free,
                    grace_period_s: grace,
                    post_call_surcharge_pct: pct,
                    offpeak: off.map(|(first, next)| PeriodPrices {
                        first_price_per_minute: first,
                        next_price_per_minute: next,
                    }),
                }
            },
        )
}

fn window() -> impl Strategy<Value = Option<OffPeakWindow>> {
    proptest::option::of((0u32..96, 1u32..96).prop_map(|(start, span)| {
        let quarter = |q: u32| NaiveTime::MIN + TimeDelta::minutes(i64::from(q % 96) * 15);
        // start and start + span (1..95 quarters) differ modulo a day.
        OffPeakWindow::new(quarter(start), quarter(start + span)).expect("distinct ends")
    }))
}

fn tz() -> impl Strategy<Value = Tz> {
    prop_oneof![
        Just(chrono_tz::Europe::Berlin),
        Just(chrono_tz::America::New_York),
        Just(chrono_tz::UTC),
        Just(chrono_tz::Australia::Lord_Howe),
    ]
}

fn crossing() -> impl Strategy<Value = Crossing> {
    prop_oneof![Just(Crossing::WholeCall), Just(Crossing::Split)]
}

fn posting() -> impl Strategy<Value = Posting> {
    (
        0u32..=6,
        prop_oneof![Just(RoundingMode::HalfUp), Just(RoundingMode::AwayFromZero)],
    )
        .prop_map(|(scale_dp, rounding)| Posting { scale_dp, rounding })
}

/// Answer times across 2024, which includes every DST change of the zones above.
fn answered_at() -> impl Strategy<Value = DateTime<Utc>> {
    (1_704_067_200i64..1_735_689_600).prop_map(|s| {
        // Inside chrono's range.
        DateTime::from_timestamp(s, 0).expect("valid timestamp")
    })
}

fn card(rate: Rate, offpeak_window: Option<OffPeakWindow>, crossing: Crossing, posting: Posting) -> RateCard {
    RateCard {
        tariff_id: Uuid::from_u128(1),
        tariff_version: 1,
        currency: "EUR".to_string(),
        rate,
        offpeak_window,
        crossing,
        posting,
    }
}

fn charge(ctx: &PricingContext<'_>, at: DateTime<Utc>, duration_s: u32) -> Decimal {
    rating::price(ctx, at, duration_s)
        .expect("durations within limits rate")
        .amount
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn a_charge_never_decreases_as_duration_grows_and_is_never_negative(
        rate in rate(), window in window(), crossing in crossing(), posting in posting(),
        tz in tz(), at in answered_at(), short_s in 0u32..=7_200, extra_s in 0u32..=7_200,
    ) {
        let card = card(rate, window, crossing, posting);
        let ctx = card.context(tz);
        let shorter = charge(&ctx, at, short_s);
        let longer = charge(&ctx, at, short_s + extra_s);
        prop_assert!(shorter >= Decimal::ZERO);
        prop_assert!(shorter <= longer, "{shorter} > {longer}");
    }

    #[test]
    fn split_parts_sum_to_the_whole(
        rate in rate(), window in window(), posting in posting(), tz in tz(),
        at in answered_at(), duration_s in 0u32..=20_000,
    ) {
        let split_card = card(rate.clone(), window, Crossing::Split, posting);
        let split = rating::price(&split_card.context(tz), at, duration_s).expect("rates");
        let lines = &split.explanation.lines;
        // Parts cover the billed time, back to back, without gaps or overlaps.
        let mut offset_s = 0;
        for line in lines.iter().skip(1) {
            prop_assert_eq!(line.start_offset_s, offset_s.max(rate.first_interval_s));
            offset_s = line.start_offset_s + line.seconds();
        }
        let seconds: u32 = lines.iter().map(|l| l.seconds()).sum();
        prop_assert_eq!(seconds, split.billed_s);
        // Parts' exact amounts add up to the subtotal the charge was posted from.
        let hundred = Decimal::ONE_HUNDRED;
        let surcharged = split.explanation.subtotal() * (hundred + split.explanation.surcharge_pct) / hundred;
        prop_assert!((surcharged - split.explanation.amount_exact).abs() < Decimal::new(1, 20));
        // With one price set, splitting changes nothing.
        let mut flat = rate.clone();
        flat.offpeak = Some(PeriodPrices {
            first_price_per_minute: rate.first_price_per_minute,
            next_price_per_minute: rate.next_price_per_minute,
        });
        let flat_split = card(flat.clone(), window, Crossing::Split, posting);
        let flat_whole = card(flat, window, Crossing::WholeCall, posting);
        prop_assert_eq!(
            charge(&flat_split.context(tz), at, duration_s),
            charge(&flat_whole.context(tz), at, duration_s)
        );
    }

    #[test]
    fn max_duration_is_the_last_affordable_interval(
        rate in rate(), window in window(), crossing in crossing(), posting in posting(),
        tz in tz(), at in answered_at(), available in (0i64..=5_000_000).prop_map(|n| Decimal::new(n, 4)),
    ) {
        let card = card(rate.clone(), window, crossing, posting);
        let ctx = card.context(tz);
        match rating::max_duration(&ctx, at, available, MAX_CALL_DURATION_S) {
            Ok(max) => {
                prop_assert!(charge(&ctx, at, max.actual_s) <= available);
                prop_assert_eq!(max.charge_at_actual, charge(&ctx, at, max.actual_s));
                prop_assert!(max.announced_min * 60 <= max.actual_s);
                let next_s = max.actual_s + rate.next_interval_s;
                if max.limited {
                    prop_assert!(next_s > MAX_CALL_DURATION_S);
                } else {
                    prop_assert!(available < charge(&ctx, at, next_s));
                }
            }
            Err(rating::AuthorizationError::InsufficientFunds { first_charge, .. }) => {
                prop_assert!(first_charge > available);
                let first_s = rate.free_seconds + rate.first_interval_s;
                prop_assert_eq!(first_charge, charge(&ctx, at, first_s));
            }
            Err(other) => prop_assert!(false, "unexpected {other:?}"),
        }
    }
}

/// One step of a random account history.
#[derive(Debug, Clone)]
enum Step {
    Reserve {
        cap_s: Option<u32>,
    },
    /// Settle the n-th open reservation after a call of the given share of its maximum.
    Settle {
        pick: usize,
        permille: u32,
    },
    Release {
        pick: usize,
    },
    TopUp {
        amount: Decimal,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => prop_oneof![4 => (1u32..=600).prop_map(Some), 1 => Just(None)]
            .prop_map(|cap_s| Step::Reserve { cap_s }),
        3 => (0usize..8, 0u32..=1_000).prop_map(|(pick, permille)| Step::Settle { pick, permille }),
        1 => (0usize..8).prop_map(|pick| Step::Release { pick }),
        1 => (1i64..=500).prop_map(|n| Step::TopUp { amount: Decimal::new(n, 2) }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn concurrent_reservations_never_sum_past_the_balance(
        rate in rate(), posting in posting(), postpaid in any::<bool>(),
        opening in (0i64..=2_000).prop_map(|n| Decimal::new(n, 2)),
        steps in proptest::collection::vec(step(), 1..40),
    ) {
        let card = card(rate, None, Crossing::WholeCall, posting);
        let credit_limit = if postpaid { Decimal::new(300, 2) } else { Decimal::ZERO };
        let kind = if postpaid { AccountKind::Postpaid { credit_limit } } else { AccountKind::Prepaid };
        let mut state = AccountState::default();
        let mut ids = 10u128;
        let mut next_id = || { ids += 1; Uuid::from_u128(ids) };
        let apply = |state: AccountState, command: AccountCommand| {
            match account::decide(&command, &state) {
                Ok(events) => events.iter().fold(state, account::evolve),
                Err(_) => state,
            }
        };
        state = apply(state, AccountCommand::Open {
            account_id: Uuid::from_u128(1), tenant_id: Uuid::from_u128(2), kind,
            currency: "EUR".to_string(), billing_tz: chrono_tz::Europe::Berlin,
        });
        if opening > Decimal::ZERO {
            state = apply(state, AccountCommand::TopUp { payment_id: next_id(), amount: opening });
        }
        // Maximum duration of each open reservation, by id.
        let mut granted: BTreeMap<Uuid, u32> = BTreeMap::new();
        let now = DateTime::from_timestamp(1_717_200_000, 0).expect("valid timestamp");
        for step in steps {
            match step {
                Step::Reserve { cap_s } => {
                    let reservation_id = next_id();
                    let command = AccountCommand::Reserve {
                        reservation_id, call_id: next_id(), rate_card: card.clone(), now,
                        duration_cap_s: cap_s,
                    };
                    if let Ok(events) = account::decide(&command, &state) {
                        for event in &events {
                            if let AccountEvent::Reserved(reserved) = event {
                                granted.insert(reserved.reservation_id, reserved.max_duration.actual_s);
                            }
                        }
                        state = events.iter().fold(state, account::evolve);
                    }
                }
                Step::Settle { pick, permille } => {
                    let Some((&reservation_id, &max_s)) = granted.iter().nth(pick % granted.len().max(1)) else { continue };
                    // The SIP node ends the call by its maximum duration.
                    let duration_s = max_s * permille / 1_000;
                    let amount = rating::price(&card.context(chrono_tz::Europe::Berlin), now, duration_s)
                        .expect("rates").amount;
                    let command = AccountCommand::Settle {
                        charge_id: next_id(), call_id: Uuid::nil(), reservation_id: Some(reservation_id),
                        amount, currency: "EUR".to_string(),
                    };
                    let events = account::decide(&command, &state).expect("a settlement within its reservation is accepted");
                    for event in &events {
                        if let AccountEvent::Settled(settled) = event {
                            prop_assert!(settled.exceeded_reservation_by.is_zero());
                        }
                    }
                    state = events.iter().fold(state, account::evolve);
                    granted.remove(&reservation_id);
                }
                Step::Release { pick } => {
                    let Some(&reservation_id) = granted.keys().nth(pick % granted.len().max(1)) else { continue };
                    state = apply(state, AccountCommand::Release { reservation_id });
                    granted.remove(&reservation_id);
                }
                Step::TopUp { amount } => {
                    state = apply(state, AccountCommand::TopUp { payment_id: next_id(), amount });
                }
            }
            let reserved: Decimal = state.reservations.values().map(|r| r.amount).sum();
            prop_assert_eq!(reserved, state.reserved);
            prop_assert!(reserved <= state.balance + credit_limit,
                "reserved {} exceeds balance {} + credit {}", reserved, state.balance, credit_limit);
            prop_assert!(state.balance + credit_limit >= Decimal::ZERO);
        }
    }
}
